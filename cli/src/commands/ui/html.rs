//! Building HTML so that nothing from the coordinator can become markup:
//! tag and attribute names are `&'static str` (written here, in drover's
//! code), and every text and attribute value goes through [`escape`].
//! Host labels, instance errors and event messages come from agents and
//! operators, so a value like `<script>` must reach the page as text.

use std::fmt::Write as _;

/// Escapes `s` for HTML text and for double- or single-quoted attribute
/// values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Server-sent events cannot carry a CR; as a reference it
            // means the same in HTML.
            '\r' => out.push_str("&#13;"),
            c => out.push(c),
        }
    }
    out
}

/// An HTML fragment under construction.
#[derive(Debug, Default)]
pub struct Html {
    out: String,
}

impl Html {
    pub fn new() -> Html {
        Html::default()
    }

    fn attrs(&mut self, attrs: &[(&'static str, &str)]) {
        for (name, value) in attrs {
            let _ = write!(self.out, " {name}=\"{}\"", escape(value));
        }
    }

    /// `<tag name="value"...>`.
    pub fn open(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) -> &mut Html {
        self.out.push('<');
        self.out.push_str(tag);
        self.attrs(attrs);
        self.out.push('>');
        self
    }

    pub fn close(&mut self, tag: &'static str) -> &mut Html {
        let _ = write!(self.out, "</{tag}>");
        self
    }

    /// An element without content (`<input>`, `<circle/>` in SVG).
    pub fn void(&mut self, tag: &'static str, attrs: &[(&'static str, &str)]) -> &mut Html {
        self.out.push('<');
        self.out.push_str(tag);
        self.attrs(attrs);
        self.out.push_str("/>");
        self
    }

    /// Text, escaped.
    pub fn text(&mut self, s: &str) -> &mut Html {
        self.out.push_str(&escape(s));
        self
    }

    /// `<tag attrs>text</tag>`.
    pub fn elem(
        &mut self,
        tag: &'static str,
        attrs: &[(&'static str, &str)],
        text: &str,
    ) -> &mut Html {
        self.open(tag, attrs).text(text).close(tag)
    }

    /// Markup written in drover's own code.
    pub fn raw(&mut self, s: &'static str) -> &mut Html {
        self.out.push_str(s);
        self
    }

    /// Another fragment, already built (and so already escaped).
    pub fn append(&mut self, other: Html) -> &mut Html {
        self.out.push_str(&other.out);
        self
    }

    /// A table row of text cells.
    pub fn row(&mut self, attrs: &[(&'static str, &str)], cells: &[&str]) -> &mut Html {
        self.open("tr", attrs);
        for c in cells {
            self.elem("td", &[], c);
        }
        self.close("tr")
    }

    /// A table header row.
    pub fn header(&mut self, cells: &[&str]) -> &mut Html {
        self.open("tr", &[]);
        for c in cells {
            self.elem("th", &[], c);
        }
        self.close("tr")
    }

    pub fn into_string(self) -> String {
        self.out
    }
}

/// Which page the navigation marks as current.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Fleet,
    Rollouts,
    Drills,
}

/// The whole page around `body`: the navigation, who is connected where,
/// the stylesheet and the script.
pub fn page(title: &str, nav: Nav, connected: &str, body: Html) -> String {
    let mut h = Html::new();
    h.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
        .elem("title", &[], &format!("{title} · drover"))
        .raw("<link rel=\"stylesheet\" href=\"/assets/ui.css\"></head><body>")
        .raw("<header><a class=\"brand\" href=\"/\">drover</a><nav>");
    for (which, href, label) in [
        (Nav::Fleet, "/", "Fleet"),
        (Nav::Rollouts, "/rollouts", "Rollouts"),
        (Nav::Drills, "/drills", "Drills"),
    ] {
        let class = if which == nav { "current" } else { "" };
        h.elem("a", &[("href", href), ("class", class)], label);
    }
    h.raw("</nav>")
        .elem("span", &[("class", "conn")], connected)
        .raw("</header><main>")
        .append(body)
        .raw("</main><script src=\"/assets/ui.js\"></script></body></html>\n");
    h.into_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_attributes_are_escaped() {
        let hostile = "<script>alert('x')</script>\"&";
        let mut h = Html::new();
        h.elem("td", &[("data-value", hostile)], hostile);
        let s = h.into_string();
        assert_eq!(
            s,
            "<td data-value=\"&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;\">\
             &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&quot;&amp;</td>"
        );
        assert!(!s.contains("<script"));
    }

    #[test]
    fn a_page_has_one_script_and_marks_the_current_section() {
        let mut body = Html::new();
        body.elem("p", &[], "<b>");
        let p = page("x<y", Nav::Rollouts, "operator/<alice>", body);
        assert_eq!(p.matches("<script").count(), 1, "{p}");
        assert!(p.contains("<title>x&lt;y · drover</title>"), "{p}");
        assert!(
            p.contains("<a href=\"/rollouts\" class=\"current\">"),
            "{p}"
        );
        assert!(p.contains("operator/&lt;alice&gt;"), "{p}");
        assert!(p.contains("<p>&lt;b&gt;</p>"), "{p}");
    }
}

//! Numbers as a human reads them in `drover rollout analysis`.

/// 2390 -> "2,390".
pub(crate) fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A fraction as a percentage with two significant digits below 10%:
/// 0.0017 -> "0.17%", 0.051 -> "5.1%", 0.25 -> "25%".
pub(crate) fn percent(fraction: f64) -> String {
    let pct = fraction * 100.0;
    if !pct.is_finite() {
        return "-".to_string();
    }
    if pct == 0.0 {
        return "0%".to_string();
    }
    if pct.abs() >= 10.0 {
        return format!("{pct:.0}%");
    }
    let decimals = (1 - pct.abs().log10().floor() as i32).clamp(1, 6) as usize;
    format!("{pct:.decimals$}%")
}

/// Percentage points between two fractions: 0.049 -> "4.9".
pub(crate) fn points(fraction: f64) -> String {
    let s = percent(fraction);
    s.trim_end_matches('%').to_string()
}

/// A p-value: "0.034", "2.1e-12", "<1e-300" when it underflowed.
pub(crate) fn p_value(p: f64) -> String {
    if p == 0.0 {
        "<1e-300".to_string()
    } else if p >= 0.001 {
        let s = format!("{p:.3}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        s.to_string()
    } else {
        format!("{p:.1e}")
    }
}

/// Milliseconds: "7.5 ms", "120 ms".
pub(crate) fn ms(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// A threshold as written: 0.001 -> "0.001", 2.0 -> "2".
pub(crate) fn plain(v: f64) -> String {
    format!("{v}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(count(0), "0");
        assert_eq!(count(612), "612");
        assert_eq!(count(2_390), "2,390");
        assert_eq!(count(1_234_567), "1,234,567");
        assert_eq!(percent(0.0017), "0.17%");
        assert_eq!(percent(31.0 / 612.0), "5.1%");
        assert_eq!(percent(0.25), "25%");
        assert_eq!(percent(0.0), "0%");
        assert_eq!(points(0.049), "4.9");
        assert_eq!(p_value(2e-12), "2.0e-12");
        assert_eq!(p_value(0.034), "0.034");
        assert_eq!(p_value(1.0), "1");
        assert_eq!(p_value(0.0), "<1e-300");
        assert_eq!(ms(7.5), "7.5 ms");
        assert_eq!(ms(120.4), "120 ms");
        assert_eq!(plain(0.001), "0.001");
        assert_eq!(plain(2.0), "2");
    }
}

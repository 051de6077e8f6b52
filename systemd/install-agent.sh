#!/usr/bin/env bash
# Installs, configures, enrols and starts a drover agent on this host.
#
# Run as root from a directory holding drover-agent.service (and usually the drover-agent
# binary). The line to run, with a fresh token, is printed by `drover token create`.
#
# Environment overrides (for packaging and for tests that run unprivileged into a temp dir):
#   DROVER_ETC        instead of /etc                  (config: $DROVER_ETC/drover/agent.toml)
#   DROVER_UNIT_DIR   instead of $DROVER_ETC/systemd/system
#   DROVER_DATA_DIR   instead of /var/lib/drover-agent (written into a new agent.toml)
set -euo pipefail

readonly PROG="install-agent.sh"

usage() {
	cat <<'EOF'
Usage: install-agent.sh --coordinator ADDR --token TOKEN --ca-fingerprint SHA256 [options]

Installs the drover agent binary and systemd unit, writes /etc/drover/agent.toml (unless it
exists), enrols this host with the coordinator and starts the agent.

Required:
  --coordinator ADDR       coordinator gRPC address, host:port (repeat for failover; the
                           first one is used for enrolment)
  --token TOKEN            enrolment token from `drover token create`
  --ca-fingerprint SHA256  the cluster CA fingerprint printed with the token (sha256:hex)

Options:
  --binary PATH            drover-agent binary to install (default: ./drover-agent next to
                           this script, else keep an already installed one)
  --host-id ID             this host's id (default: the hostname)
  --label KEY=VALUE        a host label, e.g. --label env=prod --label zone=a (repeatable)
  --prefix DIR             install the binary to DIR/bin (default: /usr/local)
  --config-only            only write the config file; skip the binary, unit, enrolment
                           and start (--token and --ca-fingerprint are then optional)
  --no-start               install and enrol, but do not enable or start the service
  -h, --help               show this help

Environment: DROVER_ETC (default /etc), DROVER_UNIT_DIR (default $DROVER_ETC/systemd/system),
DROVER_DATA_DIR (default /var/lib/drover-agent) relocate what is written, e.g. for tests.
EOF
}

die() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	exit 1
}

usage_error() {
	printf '%s: error: %s\n' "$PROG" "$*" >&2
	printf "Run '%s --help' for usage.\n" "$PROG" >&2
	exit 2
}

info() {
	printf '%s: %s\n' "$PROG" "$*"
}

# Makes sure a directory exists and is writable, with a hint instead of a bare EACCES.
writable_dir() {
	local dir=$1 mode=$2
	if ! install -d -m "$mode" "$dir" 2>/dev/null || [ ! -w "$dir" ]; then
		die "cannot write to $dir: run as root (sudo), or relocate with --prefix, DROVER_ETC, DROVER_UNIT_DIR or DROVER_DATA_DIR"
	fi
}

# Escapes a string for use as the replacement in a sed s|...|...| command.
sed_replacement() {
	printf '%s' "$1" | sed -e 's/[\\|&]/\\&/g'
}

# ---- arguments ----

coordinators=()
labels=()
token=""
ca_fingerprint=""
binary=""
host_id=""
prefix="/usr/local"
config_only=false
no_start=false

# Value of an option given as `--opt VALUE`; fails if VALUE is missing.
need_value() {
	if [ "$#" -lt 2 ] || [ -z "$2" ]; then
		usage_error "$1 needs a value"
	fi
}

while [ "$#" -gt 0 ]; do
	opt=$1
	# Accept --opt=VALUE as well as --opt VALUE.
	case $opt in
	--*=*)
		set -- "${opt%%=*}" "${opt#*=}" "${@:2}"
		opt=$1
		;;
	esac
	case $opt in
	-h | --help)
		usage
		exit 0
		;;
	--coordinator)
		need_value "$@"
		coordinators+=("$2")
		shift 2
		;;
	--token)
		need_value "$@"
		token=$2
		shift 2
		;;
	--ca-fingerprint)
		need_value "$@"
		ca_fingerprint=$2
		shift 2
		;;
	--binary)
		need_value "$@"
		binary=$2
		shift 2
		;;
	--host-id)
		need_value "$@"
		host_id=$2
		shift 2
		;;
	--label)
		need_value "$@"
		labels+=("$2")
		shift 2
		;;
	--prefix)
		need_value "$@"
		prefix=$2
		shift 2
		;;
	--config-only)
		config_only=true
		shift
		;;
	--no-start)
		no_start=true
		shift
		;;
	*)
		usage_error "unknown argument: $opt"
		;;
	esac
done

# ---- validation (before touching anything) ----

if [ "${#coordinators[@]}" -eq 0 ]; then
	usage_error "missing --coordinator ADDR (the coordinator's gRPC address, e.g. coord1:7443)"
fi
for addr in "${coordinators[@]}"; do
	if ! [[ $addr =~ ^[A-Za-z0-9._:-]+$|^\[[0-9A-Fa-f:.]+\]:[0-9]+$ ]]; then
		usage_error "--coordinator '$addr': expected host:port"
	fi
done
if ! $config_only; then
	[ -n "$token" ] || usage_error "missing --token TOKEN (create one with: drover token create)"
	[ -n "$ca_fingerprint" ] ||
		usage_error "missing --ca-fingerprint SHA256 (printed by: drover token create)"
fi
if [ -n "$ca_fingerprint" ] && ! [[ $ca_fingerprint =~ ^[A-Za-z0-9:]+$ ]]; then
	usage_error "--ca-fingerprint '$ca_fingerprint': expected sha256:HEX"
fi

if [ -z "$host_id" ]; then
	host_id=$(uname -n)
	host_id_source="the hostname"
else
	host_id_source="--host-id"
fi
if ! [[ $host_id =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$ ]]; then
	usage_error "host id '$host_id' (from $host_id_source): expected 1-63 characters [A-Za-z0-9._-] starting with a letter or digit; pass --host-id"
fi

label_re='^[A-Za-z0-9._/-]{1,316}=[A-Za-z0-9._/-]{1,63}$'
declare -A seen_label_keys=()
for label in "${labels[@]}"; do
	if ! [[ $label =~ $label_re ]]; then
		usage_error "--label '$label': expected KEY=VALUE with characters [A-Za-z0-9._/-]"
	fi
	key=${label%%=*}
	if [ -n "${seen_label_keys[$key]:-}" ]; then
		usage_error "--label '$label': key '$key' given twice"
	fi
	seen_label_keys[$key]=1
done

case $prefix in
/*) ;;
*) usage_error "--prefix '$prefix': expected an absolute path" ;;
esac

etc_root=${DROVER_ETC:-/etc}
conf_dir="$etc_root/drover"
config="$conf_dir/agent.toml"
unit_dir=${DROVER_UNIT_DIR:-$etc_root/systemd/system}
data_dir=${DROVER_DATA_DIR:-/var/lib/drover-agent}
script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
unit_src="$script_dir/drover-agent.service"
agent_bin="$prefix/bin/drover-agent"

for path in "$conf_dir" "$unit_dir" "$data_dir"; do
	case $path in
	/*) ;;
	*) usage_error "'$path': expected an absolute path (check DROVER_ETC, DROVER_UNIT_DIR, DROVER_DATA_DIR)" ;;
	esac
	case $path in
	*'"'* | *\\*) usage_error "'$path': quotes and backslashes are not supported" ;;
	esac
done

if ! $config_only; then
	if [ -z "$binary" ] && [ -f "$script_dir/drover-agent" ]; then
		binary="$script_dir/drover-agent"
	fi
	if [ -n "$binary" ]; then
		[ -f "$binary" ] || usage_error "--binary '$binary': no such file"
		[ -x "$binary" ] || usage_error "--binary '$binary': not executable"
	elif [ ! -x "$agent_bin" ]; then
		usage_error "no drover-agent binary: pass --binary PATH (nothing next to this script, nothing at $agent_bin)"
	fi
	[ -f "$unit_src" ] || die "missing $unit_src: keep drover-agent.service next to this script"
fi

# ---- binary and unit ----

if ! $config_only; then
	if [ -n "$binary" ] && ! [ "$binary" -ef "$agent_bin" ]; then
		writable_dir "$prefix/bin" 0755
		install -m 0755 "$binary" "$agent_bin"
		info "installed $agent_bin"
	else
		info "using $agent_bin"
	fi

	writable_dir "$unit_dir" 0755
	unit_tmp=$(mktemp "$unit_dir/.drover-agent.service.XXXXXX")
	trap 'rm -f "$unit_tmp"' EXIT
	# The unit names /usr/local and /etc; point it at where things really are.
	sed -e "s|/usr/local/bin/drover-agent|$(sed_replacement "$agent_bin")|g" \
		-e "s|/etc/drover/agent.toml|$(sed_replacement "$config")|g" \
		"$unit_src" >"$unit_tmp"
	chmod 0644 "$unit_tmp"
	mv -f "$unit_tmp" "$unit_dir/drover-agent.service"
	trap - EXIT
	info "installed $unit_dir/drover-agent.service"
fi

# ---- config ----

write_config() {
	local coordinator_list="" addr label
	for addr in "${coordinators[@]}"; do
		coordinator_list+="${coordinator_list:+, }\"$addr\""
	done
	cat <<EOF
# drover agent configuration, written by install-agent.sh.
# Changes take effect when the agent restarts: systemctl restart drover-agent
# (instances keep running across agent restarts).

host_id = "$host_id"
data_dir = "$data_dir"
# One or more coordinators; the agent fails over between them.
coordinators = [$coordinator_list]
report_interval = "5s"

# Host labels; rollouts select hosts with selectors like \`env=prod,zone in (a,b)\`.
[labels]
EOF
	for label in "${labels[@]}"; do
		printf '"%s" = "%s"\n' "${label%%=*}" "${label#*=}"
	done
	cat <<'EOF'

# One block per instance this agent manages. Instance id: "<name>@<host_id>".
#
# [[instance]]
# name = "web"
# service = "web"
# runtime = "process"                   # "process" (the agent supervises it) or "systemd"
# command = "/usr/local/bin/web"        # process runtime
# args = ["--port", "8080"]
# env = { VERSION = "v1" }
# working_dir = "/srv/web"
# stop_signal = "SIGTERM"
# stop_timeout = "10s"
# # unit = "web.service"                # systemd runtime
# [instance.health]                     # without it, health is NONE
# type = "http"                         # http | tcp | exec
# url = "http://127.0.0.1:8080/healthz"
# expect_status = 200
# interval = "2s"
# timeout = "1s"
# rise = 2
# fall = 3
EOF
}

writable_dir "$conf_dir" 0755
if [ -e "$config" ]; then
	info "keeping existing $config (not changed; --coordinator/--host-id/--label apply only to a new file)"
else
	config_tmp=$(mktemp "$conf_dir/.agent.toml.XXXXXX")
	trap 'rm -f "$config_tmp"' EXIT
	write_config >"$config_tmp"
	chmod 0644 "$config_tmp"
	mv -f "$config_tmp" "$config"
	trap - EXIT
	info "wrote $config (host_id $host_id)"
fi

enroll_cmd=("$agent_bin" --config "$config" enroll --coordinator "${coordinators[0]}"
	--token "${token:-TOKEN}" --ca-fingerprint "${ca_fingerprint:-SHA256}")

if $config_only; then
	info "config only: not installing, enrolling or starting. Next:"
	printf '  %s\n' "${enroll_cmd[*]}"
	printf '  systemctl daemon-reload && systemctl enable --now drover-agent\n'
	exit 0
fi

# ---- enrolment ----

writable_dir "$data_dir" 0700
info "enrolling with ${coordinators[0]}"
if ! "${enroll_cmd[@]}"; then
	die "enrolment failed (see the message above); get a fresh token with \`drover token create\` and re-run"
fi

# ---- start ----

start_by_hand() {
	printf '  %s\n' "$*"
	printf '  or run it in the foreground: %s --config %s run\n' "$agent_bin" "$config"
}

if $no_start; then
	info "--no-start: not starting the agent. To start it:"
	start_by_hand "systemctl daemon-reload && systemctl enable --now drover-agent"
elif [ ! -d /run/systemd/system ]; then
	info "systemd is not running on this host; start the agent by hand:"
	start_by_hand "(with systemd) systemctl daemon-reload && systemctl enable --now drover-agent"
else
	systemctl daemon-reload
	if systemctl is-active --quiet drover-agent.service; then
		# An upgrade: restart onto the new binary. KillMode=process keeps instances running.
		systemctl enable drover-agent.service
		systemctl restart drover-agent.service
		info "restarted drover-agent"
	else
		systemctl enable --now drover-agent.service
		info "started drover-agent"
	fi
	printf '  status: systemctl status drover-agent; logs: journalctl -u drover-agent -f\n'
fi

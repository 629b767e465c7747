# TEST SHIM of OpenWrt's /lib/functions/procd.sh for the passthrough QEMU image (no procd, no ubus).
# The calls an init script makes are kept; instead of sending JSON to procd over ubus, the shim
# keeps each instance's parameters under /run/procd-shim/SERVICE/INSTANCE/ (one file per param,
# one argument a line) and starts /sbin/pt-procd-run, a shell supervisor that does what procd does
# for an instance: run `command` with `env`, respawn it (threshold/timeout/retry as procd), stop it
# with SIGTERM then SIGKILL after term_timeout, forward procd_send_signal.
# Like procd: start with unchanged parameters keeps a running instance, changed parameters
# restart it, and instances a new start no longer declares are stopped.
# Reload triggers (procd_add_reload_trigger) are recorded; /sbin/reload_config (shim) fires them
# for changed /etc/config files, as `uci commit` + `reload_config` (LuCI's apply) does on OpenWrt.
# Recorded only: interface/netdev/file triggers, validation, data, jail/seccomp/user/limits.
# stdout/stderr of instances always go to /var/log/SERVICE.log (procd would send them to logd
# when stdout/stderr are 1).

PROCD_SHIM=/run/procd-shim

procd_lock() { :; }

procd_open_service() {
	_PROCD_SERVICE=$1
	_PROCD_SCRIPT=$2
	_PROCD_SEEN=
	_PROCD_SEQ=0
	mkdir -p "$PROCD_SHIM/$_PROCD_SERVICE"
}

procd_open_instance() {
	local name="$1"
	if [ -z "$name" ]; then
		_PROCD_SEQ=$((_PROCD_SEQ + 1))
		name="instance$_PROCD_SEQ"
	fi
	_PROCD_INSTANCE=$name
	_PROCD_NEW="$PROCD_SHIM/$_PROCD_SERVICE/.new.$name"
	rm -rf "$_PROCD_NEW"
	mkdir -p "$_PROCD_NEW"
}

procd_set_param() {
	local type="$1"
	shift
	[ -n "$_PROCD_NEW" ] || return 0
	case "$type" in
	respawn) printf '%s\n' "${1:-3600}" "${2:-5}" "${3:-5}" >"$_PROCD_NEW/respawn" ;;
	*)
		: >"$_PROCD_NEW/$type"
		for a in "$@"; do printf '%s\n' "$a" >>"$_PROCD_NEW/$type"; done
		;;
	esac
}

procd_append_param() {
	local type="$1"
	shift
	[ -n "$_PROCD_NEW" ] || return 0
	for a in "$@"; do printf '%s\n' "$a" >>"$_PROCD_NEW/$type"; done
}

_procd_shim_same() {  # same parameters in both instance dirs?
	local f
	for f in "$1"/* "$2"/*; do
		case "${f##*/}" in pid | sup.pid | '*') continue ;; esac
		cmp -s "$1/${f##*/}" "$2/${f##*/}" || return 1
	done
	return 0
}

_procd_shim_alive() {  # instance dir has a live supervisor
	local sup
	sup=$(cat "$1/sup.pid" 2>/dev/null)
	[ -n "$sup" ] && kill -0 "$sup" 2>/dev/null
}

_procd_shim_stop() {
	local dir="$1" sup n=0 limit
	sup=$(cat "$dir/sup.pid" 2>/dev/null)
	if [ -n "$sup" ] && kill -0 "$sup" 2>/dev/null; then
		kill -TERM "$sup" 2>/dev/null
		limit=$(($(cat "$dir/term_timeout" 2>/dev/null || echo 5) * 20 + 40))
		while kill -0 "$sup" 2>/dev/null && [ $n -lt $limit ]; do
			sleep 0.05
			n=$((n + 1))
		done
	fi
	rm -rf "$dir"
}

procd_close_instance() {
	local dir="$PROCD_SHIM/$_PROCD_SERVICE/$_PROCD_INSTANCE"
	[ -n "$_PROCD_NEW" ] || return 0
	_PROCD_SEEN="$_PROCD_SEEN $_PROCD_INSTANCE"
	if [ ! -s "$_PROCD_NEW/command" ]; then
		echo "procd-shim: instance $_PROCD_SERVICE.$_PROCD_INSTANCE has no command" >&2
		rm -rf "$_PROCD_NEW"
		_PROCD_NEW=
		return 1
	fi
	if _procd_shim_alive "$dir" && _procd_shim_same "$dir" "$_PROCD_NEW"; then
		rm -rf "$_PROCD_NEW"  # unchanged: keep it running, like procd
	else
		[ -d "$dir" ] && _procd_shim_stop "$dir"
		mv "$_PROCD_NEW" "$dir"
		echo "$_PROCD_SERVICE" >"$dir/.service"
		setsid /sbin/pt-procd-run "$dir" </dev/null >/dev/null 2>&1 &
		# wait until the supervisor has started the command (procd answers after fork too)
		local n=0
		while [ ! -s "$dir/pid" ] && [ $n -lt 100 ]; do
			sleep 0.02
			n=$((n + 1))
		done
	fi
	_PROCD_NEW=
}

procd_close_service() {
	local d name
	for d in "$PROCD_SHIM/$_PROCD_SERVICE"/*; do
		[ -d "$d" ] || continue
		name=${d##*/}
		case " $_PROCD_SEEN " in *" $name "*) continue ;; esac
		_procd_shim_stop "$d"
	done
	_PROCD_SERVICE=
}

procd_kill() {  # SERVICE [INSTANCE]
	local d
	for d in "$PROCD_SHIM/$1"/${2:-*}; do
		[ -d "$d" ] && _procd_shim_stop "$d"
	done
	return 0
}

procd_running() {  # SERVICE [INSTANCE]
	local d
	for d in "$PROCD_SHIM/$1"/${2:-*}; do
		[ -d "$d" ] && _procd_shim_alive "$d" && [ -n "$(cat "$d/pid" 2>/dev/null)" ] &&
			kill -0 "$(cat "$d/pid")" 2>/dev/null && return 0
	done
	return 1
}

procd_send_signal() {  # SERVICE [INSTANCE|'*'] [SIGNAL]
	local d pid sig="${3:-HUP}"
	for d in "$PROCD_SHIM/$1"/${2:-*}; do
		[ -d "$d" ] || continue
		pid=$(cat "$d/pid" 2>/dev/null)
		[ -n "$pid" ] || continue
		case "$sig" in
		[0-9]*) kill "-$sig" "$pid" ;;
		*) kill -s "${sig#SIG}" "$pid" ;;
		esac
	done
}

procd_add_reload_trigger() {
	local c
	mkdir -p "$PROCD_SHIM/.triggers"
	for c in "$@"; do
		grep -qx "$_PROCD_SCRIPT" "$PROCD_SHIM/.triggers/$c" 2>/dev/null ||
			echo "$_PROCD_SCRIPT" >>"$PROCD_SHIM/.triggers/$c"
	done
}

procd_add_config_trigger() {  # "config.change" CONFIG CMD...: recorded as a reload trigger
	local ev="$1" c="$2"
	[ "$ev" = config.change ] && procd_add_reload_trigger "$c"
	return 0
}

procd_open_trigger() { :; }
procd_close_trigger() { :; }
procd_add_interface_trigger() { :; }
procd_add_reload_interface_trigger() { :; }
procd_add_raw_trigger() { :; }
procd_add_restart_mount_trigger() { :; }
procd_add_reload_mount_trigger() { :; }
procd_open_validate() { :; }
procd_close_validate() { :; }
procd_add_validation() { :; }
procd_open_data() { :; }
procd_close_data() { :; }
procd_add_jail() { :; }
procd_add_jail_mount() { :; }
procd_add_jail_mount_rw() { :; }
procd_set_config_changed() { :; }
procd_add_mdns() { :; }
procd_append_param_ifexists() { :; }

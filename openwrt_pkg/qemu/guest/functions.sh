# TEST SHIM of OpenWrt's /lib/functions.sh for the passthrough QEMU image: the helpers init scripts
# use most (list_contains, append, config_load/config_get/config_get_bool/config_foreach). The
# config is read through the uci shim (/sbin/uci), not libuci.

append() {
	local var="$1" value="$2" sep="${3:- }"
	eval "$var=\${$var:+\${$var}\${value:+\$sep}}\$value"
}

list_contains() {
	local var="$1" str="$2" val
	eval "val=\" \${$var} \""
	[ "${val%% $str *}" != "$val" ]
}

config_load() {
	CONFIG_SECTIONS=
	eval "$(/sbin/uci -q _shell "$1")"
}

config_get() {  # config_get VAR SECTION OPTION [DEFAULT]  |  config_get SECTION OPTION
	case "$3" in
	"") eval echo "\"\${CONFIG_${1}_${2}:-\${4}}\"" ;;
	*) eval "$1=\${CONFIG_${2}_${3}:-\${4}}" ;;
	esac
}

get_bool() {
	local _tmp="$1"
	case "$_tmp" in
	1 | on | true | yes | enabled) _tmp=1 ;;
	0 | off | false | no | disabled) _tmp=0 ;;
	*) _tmp="$2" ;;
	esac
	echo -n "$_tmp"
}

config_get_bool() {
	local _tmp
	config_get _tmp "$2" "$3" "$4"
	_tmp="$(get_bool "$_tmp" "$4")"
	eval "$1=\$_tmp"
}

config_foreach() {  # config_foreach FUNCTION [TYPE] [ARGS]
	local fn="$1" type="$2" s t
	shift
	[ $# -gt 0 ] && shift
	for s in $CONFIG_SECTIONS; do
		eval "t=\${CONFIG_${s}_TYPE}"
		[ -z "$type" ] || [ "$t" = "$type" ] || continue
		"$fn" "$s" "$@"
	done
}

uci_get() {  # uci_get CONFIG [SECTION [OPTION [DEFAULT]]]
	local v
	v=$(/sbin/uci -q get "$1${2:+.$2}${3:+.$3}") || v="$4"
	echo "$v"
}

# shellcheck shell=sh
# The helpers of every fact script (src/facts/script.rs puts the sections after them, in
# one function). Loaded with include_str! by src/shell/mod.rs; __MAX_CONTENT__ is
# replaced with facts::script::MAX_CONTENT_BYTES.
# kiln fact script: reads facts, changes nothing.
set -u
kiln_nl='
'
kiln_path() {
	# $1 = path, $2 = expected sha256 or empty, $3 = 1 when the file is sensitive.
	if [ ! -e "$1" ] && [ ! -L "$1" ]; then
		echo missing
		return 0
	fi
	if ! kiln_st=$(stat --printf='size %s\nmode %f\nuid %u\ngid %g\nowner %U\ngroup %G\nctime %.9Z\n' -- "$1" 2>/dev/null); then
		echo unreadable
		return 0
	fi
	printf '%s\n' "$kiln_st"
	if [ -L "$1" ]; then
		printf 'target %s\n' "$(readlink -n -- "$1" 2>/dev/null | base64 -w0 2>/dev/null)"
	elif [ -f "$1" ]; then
		if ! kiln_h=$(sha256sum 2>/dev/null <"$1"); then
			echo unreadable
			return 0
		fi
		kiln_h=${kiln_h%% *}
		if [ "$3" != 1 ]; then
			printf 'sha256 %s\n' "$kiln_h"
		fi
		if [ -n "$2" ]; then
			if [ "$kiln_h" = "$2" ]; then
				echo 'matches yes'
			else
				echo 'matches no'
				kiln_size=${kiln_st#size }
				kiln_size=${kiln_size%%"$kiln_nl"*}
				if [ "$3" != 1 ] && [ "$kiln_size" -le __MAX_CONTENT__ ] && kiln_c=$(base64 -w0 2>/dev/null <"$1"); then
					printf 'content %s\n' "$kiln_c"
				fi
			fi
		fi
	fi
	# Forget the hash, so that nothing later in the script can print it by mistake.
	kiln_h=
}
kiln_user() {
	if kiln_e=$(getent passwd -- "$1" 2>/dev/null); then
		printf 'passwd %s\n' "$kiln_e"
		printf 'groups %s\n' "$(id -nG -- "$1" 2>/dev/null)"
	fi
}
kiln_group() {
	if kiln_e=$(getent group -- "$1" 2>/dev/null); then
		printf 'group %s\n' "$kiln_e"
	fi
}
kiln_facts() {

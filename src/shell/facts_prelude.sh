# shellcheck shell=sh
# The helpers of every fact script (src/facts/script.rs puts the sections after them, in
# one function). Loaded with include_str! by src/shell/mod.rs; __MAX_CONTENT__ is
# replaced with facts::script::MAX_CONTENT_BYTES.
# kiln fact script: reads facts, changes nothing.
set -u
kiln_nl='
'
kiln_path() {
	# One path's section, on its own (the fallback of kiln_path_next).
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
		kiln_path_target "$1"
	elif [ -f "$1" ]; then
		if ! kiln_h=$(sha256sum 2>/dev/null <"$1"); then
			echo unreadable
			return 0
		fi
		kiln_path_sum "$@" "${kiln_st#size }"
	fi
}
kiln_path_target() {
	printf 'target %s\n' "$(readlink -n -- "$1" 2>/dev/null | base64 -w0 2>/dev/null)"
}
kiln_path_sum() {
	# $1-$3 as kiln_path's, $4 = the stat lines from the size on; kiln_h = the
	# sha256sum line of the file's content.
	kiln_h=${kiln_h#\\}
	kiln_h=${kiln_h%% *}
	if [ "$3" != 1 ]; then
		printf 'sha256 %s\n' "$kiln_h"
	fi
	if [ -n "$2" ]; then
		if [ "$kiln_h" = "$2" ]; then
			echo 'matches yes'
		else
			echo 'matches no'
			kiln_size=${4%%"$kiln_nl"*}
			if [ "$3" != 1 ] && [ "$kiln_size" -le __MAX_CONTENT__ ] && kiln_c=$(base64 -w0 2>/dev/null <"$1"); then
				printf 'content %s\n' "$kiln_c"
			fi
		fi
	fi
	# Forget the hash, so that nothing later in the script can print it by mistake.
	kiln_h=
}
kiln_paths_read() {
	# Reads every path query's facts with one stat and one sha256sum, before the first
	# path section; kiln_path_next then prints each section from what it kept.
	# $1 = one character per path, 1 for a sensitive one (hashed on its own, so its
	# hash is never kept); then the paths, in the order of their sections.
	# kiln_pkind gets one character per path: m (missing), l (symlink), f (regular
	# file, hashed here), s (sensitive regular file), o (anything else).
	kiln_ps=$1
	shift
	kiln_pkind=
	for kiln_p do
		shift
		kiln_s=${kiln_ps%"${kiln_ps#?}"}
		kiln_ps=${kiln_ps#?}
		if [ -L "$kiln_p" ]; then
			kiln_k=l
		elif [ -f "$kiln_p" ]; then
			if [ "$kiln_s" = 1 ]; then kiln_k=s; else kiln_k=f; fi
		elif [ -e "$kiln_p" ]; then
			kiln_k=o
		else
			kiln_pkind=${kiln_pkind}m
			continue
		fi
		kiln_pkind=$kiln_pkind$kiln_k
		set -- "$@" "$kiln_p"
	done
	# One record per existing path, each ending in a line "-". Should stat fail on any
	# path (one removed since the test above), every section is read on its own.
	kiln_pst_ok=0
	kiln_psum_ok=0
	kiln_pst=
	kiln_psum=
	if [ $# -eq 0 ]; then
		return 0
	fi
	if ! kiln_pst=$(stat --printf='size %s\nmode %f\nuid %u\ngid %g\nowner %U\ngroup %G\nctime %.9Z\n-\n' -- "$@" 2>/dev/null); then
		kiln_pst=
		return 0
	fi
	kiln_pst=$kiln_pst$kiln_nl
	kiln_pst_ok=1
	kiln_pk=$kiln_pkind
	for kiln_p do
		shift
		kiln_k=m
		while [ "$kiln_k" = m ]; do
			kiln_k=${kiln_pk%"${kiln_pk#?}"}
			kiln_pk=${kiln_pk#?}
		done
		if [ "$kiln_k" = f ]; then
			set -- "$@" "$kiln_p"
		fi
	done
	# One line per file (sha256sum escapes a name with a newline); should any file be
	# unreadable, each file is hashed on its own.
	if [ $# -gt 0 ] && kiln_psum=$(sha256sum -- "$@" 2>/dev/null); then
		kiln_psum=$kiln_psum$kiln_nl
		kiln_psum_ok=1
	else
		kiln_psum=
	fi
}
kiln_path_next() {
	# The next path section, from what kiln_paths_read kept; arguments as kiln_path's.
	kiln_k=${kiln_pkind%"${kiln_pkind#?}"}
	kiln_pkind=${kiln_pkind#?}
	if [ "$kiln_k" = m ]; then
		echo missing
		return 0
	fi
	if [ "$kiln_pst_ok" != 1 ]; then
		kiln_path "$@"
		return 0
	fi
	kiln_st=${kiln_pst%%"$kiln_nl-$kiln_nl"*}
	kiln_pst=${kiln_pst#*"$kiln_nl-$kiln_nl"}
	printf '%s\n' "$kiln_st"
	case $kiln_k in
	l)
		kiln_path_target "$1"
		;;
	f | s)
		if [ "$kiln_k" = f ] && [ "$kiln_psum_ok" = 1 ]; then
			kiln_h=${kiln_psum%%"$kiln_nl"*}
			kiln_psum=${kiln_psum#*"$kiln_nl"}
		elif ! kiln_h=$(sha256sum 2>/dev/null <"$1"); then
			echo unreadable
			return 0
		fi
		kiln_path_sum "$@" "${kiln_st#size }"
		;;
	esac
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

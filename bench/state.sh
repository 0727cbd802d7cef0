#!/bin/sh
# The converged state of workload W on one host, in a form that can be compared across tools
# (bench/run runs it over SSH after each tool's first apply). Tool bookkeeping (kiln's
# /var/lib/kiln, Ansible's ~/.ansible, pyinfra's temp files) and timestamps are left out.
export LC_ALL=C
echo '## packages (name version status)'
dpkg-query -W -f='${Package} ${Version} ${db:Status-Abbrev}\n' | sort
echo '## user and group'
getent passwd deploy | cut -d: -f1,3-7
getent group deploy | cut -d: -f1,3-4
echo '## paths (type owner group mode size sha256 | link target)'
for p in /home/deploy /etc/kiln-bench /srv/kiln-bench /var/lib/kiln-bench \
         /etc/kiln-bench/conf_1.conf /etc/kiln-bench/conf_2.conf /etc/kiln-bench/conf_3.conf \
         /etc/kiln-bench/conf_4.conf /etc/kiln-bench/conf_5.conf /etc/kiln-bench/conf_6.conf \
         /etc/kiln-bench/conf_7.conf /etc/kiln-bench/conf_8.conf /etc/kiln-bench/conf_9.conf \
         /etc/kiln-bench/conf_10.conf /etc/kiln-bench/static_1.txt /etc/kiln-bench/static_2.txt \
         /etc/kiln-bench/static_3.txt /etc/kiln-bench/static_4.txt /etc/kiln-bench/static_5.txt \
         /etc/nginx/sites-available/kiln-bench /etc/nginx/sites-enabled/kiln-bench; do
  if [ -L "$p" ]; then
    echo "$p symlink -> $(readlink "$p")"
  elif [ -f "$p" ]; then
    echo "$p $(stat -c '%F %U %G %a %s' "$p") $(sha256sum < "$p" | cut -d' ' -f1)"
  elif [ -e "$p" ]; then
    echo "$p $(stat -c '%F %U %G %a' "$p")"
  else
    echo "$p missing"
  fi
done
echo '## /etc/kiln-bench entries'
ls -A /etc/kiln-bench 2>&1
echo '## service'
echo "nginx active=$(systemctl is-active nginx) enabled=$(systemctl is-enabled nginx 2>&1)"
echo '## vhost answers'
curl -fsS --max-time 5 "http://127.0.0.1:${1:-8081}/" 2>&1
exit 0

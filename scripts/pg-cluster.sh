#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests: no system-wide service, nothing outside DIR.
#   scripts/pg-cluster.sh start DIR   initdb into DIR, start it on a free loopback port (and a
#                                     Unix socket in DIR), print its URL
#   scripts/pg-cluster.sh start-tls DIR
#                                     the same, accepting TLS connections only, with a
#                                     certificate for 127.0.0.1 signed by a throwaway CA made in
#                                     DIR/tls; its URL says sslmode=verify-full and sslrootcert
#   scripts/pg-cluster.sh stop DIR    stop it and remove DIR
#   scripts/pg-cluster.sh pause DIR [fast|immediate]
#                                     stop the server, keeping DIR (immediate: as if killed)
#   scripts/pg-cluster.sh resume DIR  start it again on the same port
# As root, the server runs as the `postgres` user that Debian's package creates (PostgreSQL
# refuses to run as root).
set -euo pipefail

bindir=""
for d in /usr/lib/postgresql/*/bin; do
  [ -x "$d/initdb" ] && bindir="$d"
done
if [ -z "$bindir" ]; then
  echo "pg-cluster: PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start_server() {
  local tls=""
  [ -f "$dir/tls/server.key" ] &&
    tls="-c ssl=on -c ssl_cert_file=$dir/tls/server.crt -c ssl_key_file=$dir/tls/server.key"
  as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
    -o "-h 127.0.0.1 -p $1 -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=300 $tls" \
    start >/dev/null ||
    { cat "$dir/server.log" >&2; exit 1; }
}

cmd="${1:-}"
dir="${2:-}"
[ -n "$dir" ] || { echo "usage: $0 start|stop|pause|resume DIR" >&2; exit 2; }

case "$cmd" in
  start | start-tls)
    mkdir -p "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    chmod 700 "$dir"
    password="imgconv-test"
    printf '%s\n' "$password" >"$dir/.pw"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/.pw"
    as_owner "$bindir/initdb" -D "$dir/data" -U imgconv --pwfile="$dir/.pw" \
      --auth-local=trust --auth-host=scram-sha-256 -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 ||
      { cat "$dir/initdb.log" >&2; exit 1; }
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    echo "$port" >"$dir/port"
    query=""
    if [ "$cmd" = start-tls ]; then
      # A throwaway CA and a server certificate for 127.0.0.1; TCP connections must use TLS.
      mkdir -p "$dir/tls"
      (
        cd "$dir/tls"
        openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=imgconv test CA" \
          -keyout ca.key -out ca.crt >/dev/null 2>&1
        openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
          -keyout server.key -out server.csr >/dev/null 2>&1
        printf 'subjectAltName=IP:127.0.0.1\n' >ext.cnf
        openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
          -extfile ext.cnf -out server.crt >/dev/null 2>&1
      )
      chmod 600 "$dir/tls/server.key"
      chmod 755 "$dir/tls"
      chmod 644 "$dir/tls/ca.crt"
      [ "$(id -u)" -eq 0 ] && chown postgres: "$dir/tls/server.key" "$dir/tls/server.crt"
      sed -i 's/^host\([[:space:]]\)/hostssl\1/' "$dir/data/pg_hba.conf"
      query="?sslmode=verify-full&sslrootcert=$dir/tls/ca.crt"
    fi
    start_server "$port"
    echo "postgres://imgconv:$password@127.0.0.1:$port/postgres$query"
    ;;
  pause)
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m "${3:-fast}" -w stop >/dev/null
    ;;
  resume)
    start_server "$(cat "$dir/port")"
    ;;
  stop)
    if [ -d "$dir/data" ]; then
      as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|stop|pause|resume DIR" >&2
    exit 2
    ;;
esac

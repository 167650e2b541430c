# Shared by run.sh and instructions.sh (sourced).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }
# wait_port PORT [TRIES=100]: 50 ms apart.
wait_port() { for _ in $(seq 1 "${2:-100}"); do (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 not up" >&2; return 1; }

# The benchmark's scoregate config: scoregate_toml PORT CERT KEY BACKEND_PORT API_KEY
scoregate_toml() {
  cat <<CONF
[listen]
tls = "127.0.0.1:$1"
[[tls.certificates]]
cert = "$2"
key = "$3"
[[services]]
name = "iris"
primary_key = "$5"
replica_max_concurrent_requests = 1000
[[services.versions]]
name = "blue"
replicas = ["127.0.0.1:$4"]
CONF
}

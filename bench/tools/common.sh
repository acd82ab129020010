# Sourced by the scripts here: a free loopback port ($port), a temporary directory ($d), and
# in it brokk's config with the bench's settings ($d/b.toml).
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
d=$(mktemp -d)
cat > $d/b.toml <<EOT
[listeners.tcp]
bind = "127.0.0.1:$port"
[metrics]
enabled = false
[storage]
backend = "memory"
[admin]
enabled = false
[limits]
max_connections = 1000000
receive_maximum = 64
max_inflight = 64
max_queue_depth = 100000
max_queue_depth_disconnected = 100000
EOT

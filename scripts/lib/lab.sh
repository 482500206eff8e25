# Sourced by scripts/demo. A private lab of network namespaces: the shell twin of
# tests/tests/common/netns.rs. A "switch" namespace holds a bridge with no address; each
# host has a namespace of its own, joined to the bridge by a veth pair, with an address
# in $LAB_NET.0/24. No namespace has a default route and nothing is created in the
# machine's own namespace except the namespaces themselves, so all traffic (mDNS
# included) stays inside the lab. lab_down kills the daemons and deletes it all.
#
# The caller sets `murmur` (the binary) and LAB_DIR (a directory for the data dirs).
# Host i (1-based) has NODE_NS[i], NODE_ADDR[i], NODE_DIR[i] and, while its daemon
# runs, NODE_PID[i]; its daemon logs to NODE_DIR[i]/daemon.log.

LAB_NET=10.78.0
LAB_PREFIX="mmdemo$$"
LAB_SWITCH="$LAB_PREFIX-sw"
LAB_NS=()     # namespaces created, in order (lab_down deletes them)
LAB_PIDS=()   # other processes to stop at the end (followers)
NODE_NS=() NODE_ADDR=() NODE_DIR=() NODE_PID=()
WAIT_SECS=${WAIT_SECS:-20}

die() {
    printf 'demo: %s\n' "$*" >&2
    exit 1
}

# The switch namespace. Fails (with ip's message on stderr) where namespaces cannot be
# made, e.g. in a container without CAP_SYS_ADMIN: the caller then falls back.
lab_probe() {
    ip netns add "$LAB_SWITCH" || return 1
    LAB_NS+=("$LAB_SWITCH")
}

# lab_up N: the bridge and N hosts (after lab_probe).
lab_up() {
    local n=$1 i ns
    ip -n "$LAB_SWITCH" link add br0 type bridge
    # No address at all, not even an IPv6 link-local one.
    ip -n "$LAB_SWITCH" link set br0 addrgenmode none
    ip -n "$LAB_SWITCH" link set br0 up
    for ((i = 1; i <= n; i++)); do
        ns="$LAB_PREFIX-n$i"
        ip netns add "$ns"
        LAB_NS+=("$ns")
        ip -n "$LAB_SWITCH" link add "p$i" type veth peer name eth0 netns "$ns"
        ip -n "$LAB_SWITCH" link set "p$i" master br0 up
        ip -n "$ns" addr add "$LAB_NET.$i/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
        NODE_NS[i]=$ns
        NODE_ADDR[i]=$LAB_NET.$i
        NODE_DIR[i]=$LAB_DIR/n$i
    done
}

# Stops every process we started (SIGTERM, up to 5 s for a clean exit, then SIGKILL)
# and deletes the namespaces. Safe to call twice and from a trap.
lab_down() {
    set +e
    local pid alive k
    local pids=("${LAB_PIDS[@]}")
    for pid in "${NODE_PID[@]}"; do [ -n "$pid" ] && pids+=("$pid"); done
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for ((k = 0; k < 50; k++)); do
        alive=0
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null; done
    wait 2>/dev/null
    NODE_PID=() LAB_PIDS=()
    for ((k = ${#LAB_NS[@]} - 1; k >= 0; k--)); do
        ip netns del "${LAB_NS[k]}" 2>/dev/null
    done
    LAB_NS=()
}

# The murmur CLI against node i's daemon (through the socket in its data dir), with a
# time limit so that no check can hang the demo.
mm() {
    local i=$1
    shift
    timeout 10 "$murmur" --data-dir "${NODE_DIR[i]}" "$@"
}

node_log_tail() {
    local i=$1
    printf -- '--- last lines of node %s log (%s) ---\n' "$i" "${NODE_DIR[i]}/daemon.log" >&2
    tail -n 25 "${NODE_DIR[i]}/daemon.log" >&2 2>/dev/null
}

# wait_for WHAT NODE CMD...: runs CMD every 0.1 s until it succeeds, for at most
# WAIT_SECS. Fails with WHAT and the tail of NODE's daemon log if it never does, or at
# once if NODE's daemon has exited.
wait_for() {
    local what=$1 i=$2 k
    shift 2
    for ((k = 0; k < WAIT_SECS * 10; k++)); do
        "$@" && return 0
        if [ -n "${NODE_PID[i]:-}" ] && ! kill -0 "${NODE_PID[i]}" 2>/dev/null; then
            node_log_tail "$i"
            die "node $i's daemon exited while waiting for $what"
        fi
        sleep 0.1
    done
    node_log_tail "$i"
    die "gave up after ${WAIT_SECS} s waiting for $what"
}

# node_start I ARGS...: starts node i's daemon in its namespace, listening on its
# address, and waits until it answers on its socket.
node_start() {
    local i=$1
    shift
    ip netns exec "${NODE_NS[i]}" "$murmur" --data-dir "${NODE_DIR[i]}" daemon \
        --listen "/ip4/${NODE_ADDR[i]}/tcp/7470" "$@" >>"${NODE_DIR[i]}/daemon.log" 2>&1 &
    # `ip netns exec` execs in place: this is the daemon's pid.
    NODE_PID[i]=$!
    wait_for "node $i's daemon to answer on its socket" "$i" node_up "$i"
}

node_up() { mm "$1" status >/dev/null 2>&1; }

# node_stop I: SIGTERM, then waits (bounded) for a clean exit.
node_stop() {
    local i=$1 pid=${NODE_PID[$1]} k rc=0
    kill -TERM "$pid"
    for ((k = 0; k < WAIT_SECS * 10; k++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        node_log_tail "$i"
        die "node $i's daemon did not exit within ${WAIT_SECS} s of SIGTERM"
    fi
    wait "$pid" || rc=$?
    NODE_PID[i]=
    if [ "$rc" != 0 ]; then
        node_log_tail "$i"
        die "node $i's daemon exited with status $rc"
    fi
}

# A number from `murmur status` of node i: events, peers (connected), followers.
node_stat() {
    mm "$1" status 2>/dev/null | awk -v k="$2" '$1 == k { print $2; exit }'
}

node_has() { # I KEY VALUE
    [ "$(node_stat "$1" "$2")" = "$3" ]
}

# Events node I holds in application topics (`murmur topics`, leaving out the fleet's
# own `$fleet/…` topics: heartbeats arrive on every node all the time).
app_events() {
    mm "$1" topics 2>/dev/null |
        awk 'NR > 1 && $1 !~ /^\$/ && $3 ~ /^[0-9]+$/ { s += $3 } END { print s + 0 }'
}

app_events_are() { # I COUNT
    [ "$(app_events "$1")" = "$2" ]
}

# wait_exit WHAT NODE PID: waits (bounded) until process PID, a child such as a
# follower, has exited; fails with WHAT and NODE's log if it does not, or fails.
wait_exit() {
    local what=$1 i=$2 pid=$3 k rc=0
    for ((k = 0; k < WAIT_SECS * 10; k++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" || rc=$?
            [ "$rc" = 0 ] && return 0
            node_log_tail "$i"
            die "$what failed (exit status $rc)"
        fi
        sleep 0.1
    done
    node_log_tail "$i"
    die "gave up after ${WAIT_SECS} s waiting for $what"
}

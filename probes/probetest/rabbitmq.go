package probetest

import (
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// RabbitMQBin is the RabbitMQ start script that runs the node as the
// calling user (Debian's /usr/sbin wrapper would switch to "rabbitmq").
const RabbitMQBin = "/usr/lib/rabbitmq/bin/rabbitmq-server"

// EpmdPort is the Erlang port mapper's port; the RabbitMQ node starts epmd
// inside the namespace and registers with it there.
const EpmdPort = 4369

// RabbitMQStartTimeout bounds the node's boot (the Erlang VM, Mnesia and
// the AMQP listener), which takes several seconds on a small machine.
const RabbitMQStartTimeout = 40 * time.Second

// StartRabbitMQ runs a RabbitMQ node named rabbit@localhost with AMQP on
// amqpPort, its state in a temporary directory and epmd on EpmdPort.
// Roles: amqp, epmd. The node's name for epmd is "rabbit".
func (h *Harness) StartRabbitMQ(amqpPort int) *Daemon {
	h.t.Helper()
	Require(h.t, RabbitMQBin, "erl", "epmd")
	dir := h.shareableDir("rabbitmq")
	conf := filepath.Join(dir, "rabbitmq.conf")
	// no management plugins; loopback_users off is harmless: no login happens
	h.writeFile(conf, "listeners.tcp.1 = "+h.targetIP.String()+":"+strconv.Itoa(amqpPort)+"\n")
	plugins := filepath.Join(dir, "enabled_plugins")
	h.writeFile(plugins, "[].\n")
	if err := os.WriteFile(filepath.Join(dir, ".erlang.cookie"), []byte(randomHex(h.t, 16)), 0o400); err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	env := []string{
		"HOME=" + dir,
		"RABBITMQ_NODENAME=rabbit@localhost",
		"RABBITMQ_CONFIG_FILE=" + conf,
		"RABBITMQ_ENABLED_PLUGINS_FILE=" + plugins,
		"RABBITMQ_MNESIA_BASE=" + filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE=" + filepath.Join(dir, "log"),
		"RABBITMQ_LOGS=-", // to stderr, kept for failure messages
		"RABBITMQ_PID_FILE=" + filepath.Join(dir, "rabbit.pid"),
		"RABBITMQ_CONF_ENV_FILE=" + filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE=" + filepath.Join(dir, "advanced.config"),
		"ERL_EPMD_PORT=" + strconv.Itoa(EpmdPort),
	}
	argv := append([]string{"env"}, env...)
	argv = append(argv, RabbitMQBin)
	s, err := h.start("rabbitmq", argv, nil)
	if err != nil {
		h.t.Fatalf("probetest: %v", err)
	}
	h.waitPortWithin(s, amqpPort, RabbitMQStartTimeout)
	h.waitPort(s, EpmdPort)
	return h.daemon(s, "rabbitmq-server", map[string]int{"amqp": amqpPort, "epmd": EpmdPort})
}

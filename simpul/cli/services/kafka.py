"""Apache Kafka (KRaft), fetched from Maven Central and run by the project: one node or a cluster.

The jars of `org.apache.kafka:kafka_2.13` and its dependencies are resolved once with Maven into
a cache that every run reuses; each node is a combined broker+controller with its log on disk,
so a restart keeps topics, events, dead letters, join state and consumer offsets.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from simpul.cli.services.broker import BrokerError, free_port, port_is_free, wait_for_port

# docker-compose.yml runs the same version (apache/kafka image).
KAFKA_VERSION = "4.1.1"
SCALA_VERSION = "2.13"
LOG4J_VERSION = "2.24.3"


# The broker settings docker-compose.yml gives its Kafka (KAFKA_* there), for any cluster size.
def broker_settings(nodes: int) -> dict[str, str]:
    replicas = str(min(3, nodes))
    return {
        "auto.create.topics.enable": "false",
        "group.initial.rebalance.delay.ms": "0",
        "offsets.topic.replication.factor": replicas,
        "transaction.state.log.replication.factor": replicas,
        "transaction.state.log.min.isr": "2" if nodes >= 3 else "1",
        "default.replication.factor": replicas,
        "min.insync.replicas": "2" if nodes >= 3 else "1",
    }


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.simpul</groupId>
  <artifactId>kafka-server</artifactId>
  <version>{version}</version>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_{scala}</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{version}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

_LOG4J2 = """status = warn
appender.out.type = Console
appender.out.name = OUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = OUT
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "simpul" / "kafka"


def _require(tool: str, why: str, hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        raise BrokerError(f"Apache Kafka needs {tool} {why}, and none is on PATH: {hint}")
    return path


def kafka_classpath(cache_dir: Path | None = None, version: str = KAFKA_VERSION) -> str:
    """The jars of Kafka `version`, resolved through Maven into the cache on first use."""
    home = (cache_dir or default_cache_dir()) / version
    lib = home / "lib"
    done = home / ".resolved"
    if not done.exists():
        home.mkdir(parents=True, exist_ok=True)
        with open(home / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # two test runs or benches resolve once
            if not done.exists():
                _resolve(home, lib, version)
                done.write_text(version + "\n")
    return str(lib / "*")


def _resolve(home: Path, lib: Path, version: str) -> None:
    mvn = _require("mvn", "to fetch its jars from Maven Central", "apt-get install maven")
    (home / "pom.xml").write_text(
        _POM.format(version=version, scala=SCALA_VERSION, log4j=LOG4J_VERSION)
    )
    shutil.rmtree(lib, ignore_errors=True)
    result = subprocess.run(
        [
            mvn,
            "-B",
            "-q",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ],
        cwd=home,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0 or not any(lib.glob(f"kafka_{SCALA_VERSION}-{version}.jar")):
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise BrokerError(
            f"Maven could not resolve org.apache.kafka:kafka_{SCALA_VERSION}:{version} "
            f"(exit {result.returncode}):\n{tail}"
        )


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


@dataclass
class KafkaNode:
    """One combined broker+controller of a cluster."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class KafkaCluster:
    """Apache Kafka on loopback: `nodes` combined broker+controllers, data kept in `data_dir`.

    The data survives `stop()` and `kill()`: starting the same cluster again on the same
    directory finds its topics, offsets and records where they were.
    """

    data_dir: Path
    nodes: int = 1
    port: int | None = None
    overrides: Mapping[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    heap: str = "768m"
    #: With an admin password the cluster runs secured: SASL on every listener (PLAIN for the
    #: admin user, SCRAM-SHA-512 for the users `simpul acls apply` creates) and ACLs enforced.
    admin_password: str | None = None
    members: list[KafkaNode] = field(default_factory=list, init=False)
    engine: str = field(default="kafka", init=False)

    def __post_init__(self) -> None:
        if self.nodes < 1:
            raise BrokerError("a Kafka cluster needs at least one node")
        self.data_dir = Path(self.data_dir)
        ports = self._load_ports()
        for index in range(self.nodes):
            if index < len(ports):
                port, controller = ports[index]
            else:  # a chosen port is the first node's; the others take the next ones
                port = self.port + index if self.port else free_port()
                controller = free_port()
            self.members.append(
                KafkaNode(index + 1, port, controller, self.data_dir / f"node-{index + 1}")
            )

    # Ports are kept with the data, so a restarted cluster answers where it did before.
    def _ports_file(self) -> Path:
        return self.data_dir / "ports"

    def _load_ports(self) -> list[tuple[int, int]]:
        path = self._ports_file()
        if not path.exists():
            return []
        pairs = [line.split() for line in path.read_text().splitlines() if line.strip()]
        return [(int(a), int(b)) for a, b in pairs]

    @property
    def bootstrap(self) -> str:
        return ",".join(node.address for node in self.members)

    def _voters(self) -> str:
        return ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in self.members)

    @property
    def secured(self) -> bool:
        return self.admin_password is not None

    @property
    def client_protocol(self) -> str:
        return "SASL_PLAINTEXT" if self.secured else "PLAINTEXT"

    def _properties(self, node: KafkaNode) -> str:
        client = self.client_protocol
        config = {
            "node.id": str(node.node_id),
            "process.roles": "broker,controller",
            "listeners": f"{client}://127.0.0.1:{node.port},"
            f"CONTROLLER://127.0.0.1:{node.controller_port}",
            "advertised.listeners": f"{client}://127.0.0.1:{node.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": f"CONTROLLER:{client},{client}:{client}",
            "inter.broker.listener.name": client,
            "controller.quorum.voters": self._voters(),
            "log.dirs": str(node.data_dir / "log"),
            **broker_settings(self.nodes),
            **(self._security() if self.secured else {}),
            **self.overrides,
        }
        return "".join(f"{key}={value}\n" for key, value in config.items())

    def _security(self) -> dict[str, str]:
        """docker-compose.yml's Kafka is configured the same way (KAFKA_* variables)."""
        plain = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="admin" password="{self.admin_password}" user_admin="{self.admin_password}";'
        )
        return {
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-512",
            "sasl.mechanism.inter.broker.protocol": "PLAIN",
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain,
            "listener.name.sasl_plaintext.plain.sasl.jaas.config": plain,
            "listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config": (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": "User:admin",
            "allow.everyone.if.no.acl.found": "false",
        }

    def admin_options(self) -> dict[str, str]:
        """kafka-python / aiokafka options of the cluster's admin user."""
        if not self.secured:
            return {}
        return {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "PLAIN",
            "sasl_plain_username": "admin",
            "sasl_plain_password": str(self.admin_password),
        }

    def _java(self) -> list[str]:
        java = _require("java", "(17 or newer) to run", "apt-get install openjdk-17-jre-headless")
        return [
            java,
            "-Xms128m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}",
            "-cp",
            kafka_classpath(self.cache_dir),
        ]

    def prepare(self) -> None:
        """Write each node's configuration and format its log directory once."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._ports_file().write_text(
            "".join(f"{n.port} {n.controller_port}\n" for n in self.members)
        )
        (self.data_dir / "log4j2.properties").write_text(_LOG4J2)
        id_file = self.data_dir / "cluster.id"
        if not id_file.exists():
            id_file.write_text(new_cluster_id())
        cluster_id = id_file.read_text().strip()
        java = self._java()
        for node in self.members:
            node.data_dir.mkdir(parents=True, exist_ok=True)
            config = node.data_dir / "server.properties"
            config.write_text(self._properties(node))
            if (node.data_dir / "log" / "meta.properties").exists():
                continue
            result = subprocess.run(
                [
                    *java,
                    "kafka.tools.StorageTool",
                    "format",
                    f"--cluster-id={cluster_id}",
                    "-c",
                    str(config),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            )
            if result.returncode != 0:
                raise BrokerError(
                    f"formatting Kafka node {node.node_id} failed: "
                    f"{(result.stdout + result.stderr).strip()[-800:]}"
                )

    def start(self, timeout: float = 120.0) -> KafkaCluster:
        self.prepare()
        for node in self.members:
            self.start_node(node.node_id, wait=False)
        deadline = time.monotonic() + timeout
        for node in self.members:
            self._wait_node(node, max(1.0, deadline - time.monotonic()))
        self.wait_ready(max(1.0, deadline - time.monotonic()))
        return self

    def node(self, node_id: int) -> KafkaNode:
        return self.members[node_id - 1]

    def start_node(self, node_id: int, wait: bool = True, timeout: float = 120.0) -> None:
        node = self.node(node_id)
        if node.running:
            return
        for port in (node.port, node.controller_port):
            if not port_is_free(port):
                raise BrokerError(
                    f"port {port} is already in use: another broker may be running. "
                    "Stop it, or choose another port with --port."
                )
        log = open(node.data_dir / "server.log", "ab")  # noqa: SIM115
        node.process = subprocess.Popen(
            [*self._java(), "kafka.Kafka", str(node.data_dir / "server.properties")],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        if wait:
            self._wait_node(node, timeout)

    def _wait_node(self, node: KafkaNode, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if node.process is not None and node.process.poll() is not None:
                raise BrokerError(
                    f"Kafka node {node.node_id} exited with code {node.process.returncode}; "
                    f"see {node.data_dir / 'server.log'}:\n{self.log_tail(node)}"
                )
            with contextlib.suppress(BrokerError):
                wait_for_port(node.port, 0.5)
                return
        raise BrokerError(f"Kafka node {node.node_id} did not answer within {timeout:.0f}s")

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until every running node is in the cluster's metadata (the controller has them)."""
        from kafka import KafkaAdminClient

        want = {n.node_id for n in self.members if n.running}
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(
                    bootstrap_servers=[n.address for n in self.members if n.running],
                    client_id="simpul-broker-check",
                    request_timeout_ms=5000,
                    **self.admin_options(),
                )
                try:
                    brokers = {
                        b["broker_id"]
                        for b in admin.describe_cluster()["brokers"]
                        if not b.get("is_fenced")
                    }
                finally:
                    admin.close()
                if want <= brokers:
                    return
            except Exception as error:
                last = error
            time.sleep(0.3)
        raise BrokerError(f"the Kafka cluster was not ready within {timeout:.0f}s ({last})")

    def log_tail(self, node: KafkaNode, lines: int = 20) -> str:
        path = node.data_dir / "server.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def kill_node(self, node_id: int) -> None:
        """SIGKILL one node: no controlled shutdown, what the page cache held is its only copy."""
        node = self.node(node_id)
        if node.process is not None and node.process.poll() is None:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(30)

    def stop_node(self, node_id: int, timeout: float = 60.0) -> int:
        node = self.node(node_id)
        if node.process is None or node.process.poll() is not None:
            return 0 if node.process is None else int(node.process.returncode)
        node.process.send_signal(signal.SIGTERM)
        try:
            return int(node.process.wait(timeout))
        except subprocess.TimeoutExpired:
            os.killpg(node.process.pid, signal.SIGKILL)
            node.process.wait(30)
            return -signal.SIGKILL

    def kill(self) -> None:
        for node in self.members:
            self.kill_node(node.node_id)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every node at once (controlled shutdown), SIGKILL what is left at the end."""
        running = [n for n in self.members if n.running]
        for node in running:
            assert node.process is not None
            node.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for node in running:
            assert node.process is not None
            try:
                node.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_node(node.node_id)

    def __enter__(self) -> KafkaCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

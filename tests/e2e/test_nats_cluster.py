"""The broker as a 3-node JetStream cluster on loopback (what `make cluster` runs): every stream,
KV bucket and object store at 3 replicas; a SIGKILLed stream leader costs seconds, not
requests, and the node that comes back catches up; KEDA's lag, read the way its
`nats-jetstream` scaler reads it, is the real backlog on the consumer leader only.

(The whole platform on the cluster under faults is `make test-cluster`: bench/chaos.py --cluster.)
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.js.api import AckPolicy, ConsumerConfig

from llmchat_chat.service import follow_events
from llmchat_common import subjects
from llmchat_common.launch.stack import LocalStack
from llmchat_common.messaging import ensure_streams, files_store, registry_kv
from llmchat_common.publish import publish_retrying
from llmchat_common.settings import NatsSettings

REPLICAS = 3
ACCOUNT = "$G"  # nats.conf's users, no accounts: the global account


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    stack = LocalStack(tmp_path_factory.mktemp("nats-cluster"), nats_nodes=REPLICAS)
    stack.state_dir.mkdir(parents=True, exist_ok=True)
    try:
        stack.start_nats_cluster()
        yield stack
    finally:
        stack.stop()


@pytest.fixture
async def admin(cluster: LocalStack) -> AsyncIterator[Client]:
    nc = await nats.connect(
        cluster.nats_urls,
        user="admin",
        password=cluster.nats_passwords()["admin"],
        reconnect_time_wait=0.5,
        max_reconnect_attempts=-1,
        connect_timeout=2,
    )
    await ensure_streams(nc.jetstream(), NatsSettings(replicas=REPLICAS, events_max_bytes=256 * 1024**2))
    try:
        yield nc
    finally:
        await nc.close()


def monitor(cluster: LocalStack, name: str, path: str) -> dict[str, Any]:
    node = next(n for n in cluster.cluster if n.name == name)
    with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}{path}", timeout=5) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def stream_on(cluster: LocalStack, name: str, stream: str) -> dict[str, Any] | None:
    """The stream as node `name` holds it (its own replica's state)."""
    jsz = monitor(cluster, name, f"/jsz?acc={ACCOUNT}&streams=true")
    for account in jsz.get("account_details", []):
        for detail in account.get("stream_detail", []):
            if detail["name"] == stream:
                return detail  # type: ignore[no-any-return]
    return None


async def test_streams_buckets_and_the_object_store_have_three_replicas(admin: Client) -> None:
    js = admin.jetstream()
    await registry_kv(js, REPLICAS)
    await files_store(js, REPLICAS)
    names = [subjects.REQUESTS_STREAM, subjects.EVENTS_STREAM, f"KV_{subjects.REGISTRY_BUCKET}"]
    names.append(f"OBJ_{subjects.FILES_BUCKET}")
    for name in names:
        info = await js.stream_info(name)
        assert info.config.num_replicas == REPLICAS, name
        assert info.cluster is not None and info.cluster.leader, name
        replicas = info.cluster.replicas or []
        assert len(replicas) == REPLICAS - 1, name
        assert all(r.current for r in replicas), name


async def test_a_killed_stream_leader_costs_seconds_and_no_publish(
    cluster: LocalStack, admin: Client
) -> None:
    """Publishes run on while the leader of CHAT_REQUESTS is SIGKILLed: each is retried with
    its message id until a new leader takes it (none lost, none stored twice); the node comes
    back, catches up, and every replica ends with the same messages."""
    js = admin.jetstream()
    stream = subjects.REQUESTS_STREAM
    before = (await js.stream_info(stream)).state.messages
    info = await js.stream_info(stream)
    assert info.cluster is not None
    leader = info.cluster.leader
    assert leader is not None
    latencies: list[float] = []
    killed_at: list[float] = []
    count = 200

    async def publish_all() -> None:
        for i in range(count):
            started = time.monotonic()
            await publish_retrying(
                js,
                subjects.request_subject("cluster-test"),
                b"{}",
                headers={"Nats-Msg-Id": f"leader-kill-{i}"},
                attempt_timeout_s=2.0,
            )
            latencies.append(time.monotonic() - started)
            if i == 40:
                cluster.crash_process(leader)
                killed_at.append(time.monotonic())
            await asyncio.sleep(0.02)

    await asyncio.wait_for(publish_all(), timeout=120)
    assert killed_at, "the leader was never killed"
    worst = max(latencies)
    new_info = await js.stream_info(stream)
    assert new_info.cluster is not None and new_info.cluster.leader not in (None, leader)
    # At most 10 s added; nothing failed (every publish returned an ack).
    assert worst < 10.0, f"a publish waited {worst:.1f} s for the new leader"
    assert new_info.state.messages == before + count
    # The killed node comes back on its store and catches up.
    cluster.start_nats_node(leader)
    deadline = time.monotonic() + 60
    while True:
        counts = {
            n.name: (stream_on(cluster, n.name, stream) or {}).get("state", {}).get("messages")
            for n in cluster.cluster
        }
        if set(counts.values()) == {before + count}:
            break
        assert time.monotonic() < deadline, f"replicas differ: {counts}"
        await asyncio.sleep(0.5)
    print(f"leader {leader} SIGKILLed: the slowest publish took {worst:.2f} s; replicas {counts}")


async def test_a_followed_answer_rides_out_the_loss_of_the_events_leader(
    cluster: LocalStack, admin: Client
) -> None:
    """The edge follows an answer through an ordered consumer: a one-replica consumer on one
    of the nodes. That node is SIGKILLed mid-answer (the stream's leader too when it is one):
    the feed pauses for two heartbeats and, when the leader went, the election, then goes on
    from the event after its last, with nothing missed or repeated."""
    js = admin.jetstream()
    stream = subjects.EVENTS_STREAM
    request_id = f"follow-{uuid.uuid4().hex}"
    feed = await follow_events(js, request_id, 0, heartbeat_s=1.0, retry_s=12.0)
    assert feed.sub is not None
    consumer = await feed.sub.consumer_info()
    assert consumer.cluster is not None and consumer.cluster.leader is not None
    node = consumer.cluster.leader
    stream_leader = (await js.stream_info(stream)).cluster.leader  # type: ignore[union-attr]
    count = 150
    received: list[int] = []
    gaps: list[float] = []

    async def publish_all() -> None:
        for i in range(count):
            subject = subjects.event_subject(request_id, "delta")
            headers = {"Nats-Msg-Id": f"{request_id}-{i}"}
            await publish_retrying(js, subject, str(i).encode(), headers=headers, attempt_timeout_s=2.0)
            if i == 50:
                cluster.crash_process(node)
            await asyncio.sleep(0.02)

    async def read_all() -> None:
        last = time.monotonic()
        while len(received) < count:
            msg = await feed.next(30)
            received.append(int(msg.data))
            gaps.append(time.monotonic() - last)
            last = time.monotonic()

    try:
        await asyncio.wait_for(asyncio.gather(publish_all(), read_all()), timeout=90)
    finally:
        await feed.close()
        cluster.start_nats_node(node)
    assert received == list(range(count))
    worst = max(gaps)
    assert worst < 10.0, f"the feed stopped for {worst:.1f} s"
    role = "the consumer's and the stream's leader" if node == stream_leader else "the consumer's node"
    print(f"{node} ({role}) SIGKILLed: the followed answer paused {worst:.2f} s at most")


def keda_lag(cluster: LocalStack, stream: str, consumer: str) -> tuple[int, dict[str, int]]:
    """What KEDA's `nats-jetstream` scaler computes: `/jsz?acc=..&consumers=true&config=true`
    on each node, the consumer's `num_pending + num_ack_pending` from the node whose
    `server_name` is the consumer's leader. Also what every node reports (followers' view)."""
    per_node: dict[str, int] = {}
    leader_lag: int | None = None
    for node in cluster.cluster:
        jsz = monitor(cluster, node.name, f"/jsz?acc={ACCOUNT}&consumers=true&config=true")
        server = monitor(cluster, node.name, "/varz")["server_name"]
        for account in jsz.get("account_details", []):
            if account["name"] != ACCOUNT:
                continue
            for detail in account.get("stream_detail", []):
                if detail["name"] != stream:
                    continue
                for c in detail.get("consumer_detail", []):
                    if c["name"] == consumer:
                        lag = int(c.get("num_pending", 0)) + int(c.get("num_ack_pending", 0))
                        per_node[server] = lag
                        if c.get("cluster", {}).get("leader") == server:
                            leader_lag = lag
    assert leader_lag is not None, f"no node says it leads {consumer}: {per_node}"
    return leader_lag, per_node


async def test_keda_lag_from_the_consumer_leader_is_the_backlog(cluster: LocalStack, admin: Client) -> None:
    js = admin.jetstream()
    model = "keda-probe"
    durable = subjects.worker_consumer(model)
    await js.add_consumer(
        subjects.REQUESTS_STREAM,
        ConsumerConfig(
            durable_name=durable,
            filter_subject=subjects.request_subject(model),
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=120,
        ),
    )
    for i in range(10):
        await js.publish(subjects.request_subject(model), b"{}", headers={"Nats-Msg-Id": f"keda-{i}"})
    sub = await js.pull_subscribe_bind(durable, stream=subjects.REQUESTS_STREAM)
    done = await sub.fetch(3, timeout=5)
    for msg in done:
        await msg.ack_sync()
    running = await sub.fetch(2, timeout=5)  # taken by a worker, not acknowledged yet
    assert len(done) == 3 and len(running) == 2
    backlog = 10 - 3  # waiting (5) and running (2)
    deadline = time.monotonic() + 10
    while True:
        lag, per_node = keda_lag(cluster, subjects.REQUESTS_STREAM, durable)
        if lag == backlog:
            break
        assert time.monotonic() < deadline, f"KEDA would read {lag}, the backlog is {backlog}: {per_node}"
        await asyncio.sleep(0.2)
    print(f"KEDA lag {lag} (backlog {backlog}); every node's own view: {per_node}")
    assert len(per_node) == REPLICAS, per_node
    # A follower does not know what waits (its num_pending is 0 here, 2.15.1): read from it, the
    # lag would be short of the backlog, which is why the scaler must find the leader (and why
    # server_name must be the pod's name in Kubernetes).
    followers = [value for value in per_node.values() if value != backlog]
    assert len(followers) == REPLICAS - 1 and all(value < backlog for value in followers), per_node

"""`make bench` baseline: a bare Faust agent consuming the pre-loaded topic, doing nothing.

Usage: faust_baseline.py BOOTSTRAP TOPIC[,TOPIC...] COUNT RESULT_JSON
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid

import faust

bootstrap, topic_name, count, result_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]

app = faust.App(
    f"bench-baseline-{uuid.uuid4().hex[:6]}",
    broker=f"kafka://{bootstrap}",
    value_serializer="raw",
    key_serializer="raw",
    topic_allow_declare=False,
    topic_disable_leader=True,
    consumer_auto_offset_reset="earliest",
    broker_session_timeout=6,  # Apache Kafka refuses less (group.min.session.timeout.ms)
    broker_rebalance_timeout=6,
    broker_heartbeat_interval=1,
    web_enabled=False,
)
topic = app.topic(*topic_name.split(","), key_type=bytes, value_type=bytes)
state: dict[str, float] = {"n": 0}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@app.agent(topic)
async def nothing(stream):  # type: ignore[no-untyped-def]
    async for _ in stream:
        state["n"] += 1
        if state["n"] == 1:
            state["first"], state["cpu_first"] = time.perf_counter(), cpu()
        if state["n"] >= count:
            seconds = time.perf_counter() - state["first"]
            with open(result_path, "w") as out:
                json.dump(
                    {
                        "events": count,
                        "seconds": seconds,
                        "events_per_s": (count - 1) / seconds,
                        "cpu_seconds": cpu() - state["cpu_first"],
                        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    },
                    out,
                )
            os._exit(0)


if __name__ == "__main__":
    from faust.worker import Worker

    Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()

"""A raw log of the contract's topics in MCAP: every message as it came off the wire (CDR), with the ROS 2
message definitions as ``ros2msg`` schemas, as rosbag2's MCAP storage writes them, so ``ros2 bag``,
Foxglove and rosbags open it.

Subscriptions are raw (no deserialisation: the bytes received are the bytes written). The writer compresses
per chunk (zstd) and the log is flushed every ``flush_period_s``: a killed process loses at most that much,
and what is on disk is a valid MCAP prefix (header, schemas, channels, whole chunks) that a streaming
reader reads to its end; `recover` rewrites such a file into a complete one. Messages the middleware
reports lost (the ``message_lost`` QoS event) are counted per topic.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mcap.exceptions import McapError
from mcap.records import Channel, Message, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import CompressionType, Writer
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node

from gato_ros.ros import contract

PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32",
    "int64", "uint64", "string", "wstring",
}  # fmt: skip
SEPARATOR = "=" * 80


def type_name(msg_type: type) -> str:
    """``sensor_msgs/msg/Image`` for the Python class of sensor_msgs.msg.Image."""
    package = msg_type.__module__.split(".")[0]
    return f"{package}/msg/{msg_type.__name__}"


def _msg_file(package: str, name: str) -> Path:
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p] + [sys.prefix]
    for prefix in prefixes:
        path = Path(prefix) / "share" / package / "msg" / f"{name}.msg"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {package}/msg/{name}.msg under {prefixes} (share/<package>/msg)")


def _field_types(definition: str, package: str) -> list[tuple[str, str]]:
    """(package, name) of every message type a .msg text's fields use (constants are primitives)."""
    used = []
    for raw in definition.splitlines():
        tokens = raw.split("#", 1)[0].split()
        if len(tokens) < 2:
            continue
        base = re.sub(r"<=\d+$", "", re.sub(r"\[.*\]$", "", tokens[0]))  # T[], T[3], T[<=3], string<=5
        if base in PRIMITIVES:
            continue
        if "/" in base:
            pkg, name = base.split("/")[0], base.split("/")[-1]
        else:
            pkg, name = ("std_msgs", "Header") if base == "Header" else (package, base)
        used.append((pkg, name))
    return used


def message_definition(msg_type: type) -> str:
    """The ``ros2msg`` schema of a message type: its .msg text, then every message type it uses (depth
    first, each once) after a separator line and ``MSG: package/Type``, as rosbag2 writes it."""
    package, _, name = type_name(msg_type).partition("/msg/")
    root = _msg_file(package, name).read_text()
    parts, seen, pending = [root.strip()], {(package, name)}, list(_field_types(root, package))
    while pending:
        pkg, dep = pending.pop(0)
        if (pkg, dep) in seen:
            continue
        seen.add((pkg, dep))
        text = _msg_file(pkg, dep).read_text()
        parts.append(f"{SEPARATOR}\nMSG: {pkg}/{dep}\n{text.strip()}")
        pending.extend(_field_types(text, pkg))
    return "\n".join(parts) + "\n"


class McapTopicLog:
    """Records `topics` (contract topics) heard by `node` into `path` until `close`."""

    def __init__(
        self, node: Node, path: str | Path, topics: Iterable[contract.Topic], flush_period_s: float = 1.0
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".active")  # renamed once complete
        self.file = open(self.partial, "wb")  # noqa: SIM115 - open until close()
        self.writer = Writer(self.file, compression=CompressionType.ZSTD)
        self.writer.start(profile="ros2", library="gato_ros")
        self.node = node
        self.counts: Counter[str] = Counter()
        self.lost: Counter[str] = Counter()
        self.subscriptions: list[Any] = []
        self.sequence = 0
        schemas: dict[str, int] = {}
        for topic in topics:
            name = type_name(topic.msg_type)
            if name not in schemas:
                schemas[name] = self.writer.register_schema(
                    name=name, encoding="ros2msg", data=message_definition(topic.msg_type).encode()
                )
            resolved = node.resolve_topic_name(topic.name)
            channel = self.writer.register_channel(
                topic=resolved,
                message_encoding="cdr",
                schema_id=schemas[name],
                metadata={"offered_qos_profiles": ""},
            )
            events = SubscriptionEventCallbacks(
                message_lost=lambda info, t=resolved: self.on_lost(t, info), use_default_callbacks=False
            )
            self.subscriptions.append(
                node.create_subscription(
                    topic.msg_type,
                    topic.name,
                    lambda data, c=channel, t=resolved: self.on_message(c, t, data),
                    topic.qos.profile(),
                    raw=True,
                    event_callbacks=events,
                )
            )
        self.timer = node.create_timer(flush_period_s, self.flush)

    def on_message(self, channel: int, topic: str, data: bytes) -> None:
        if self.file.closed:
            return
        now = time.time_ns()
        self.writer.add_message(channel, log_time=now, data=data, publish_time=now, sequence=self.sequence)
        self.sequence += 1
        self.counts[topic] += 1

    def on_lost(self, topic: str, info: Any) -> None:
        self.lost[topic] += int(getattr(info, "total_count_change", 1) or 1)

    def flush(self) -> None:
        if not self.file.closed:
            self.writer.flush()

    def close(self, keep: bool = True) -> dict[str, Any]:
        """Stop logging; finish the file (`keep`) or delete it. Returns the per-topic message and loss
        counts."""
        self.node.destroy_timer(self.timer)
        for subscription in self.subscriptions:
            self.node.destroy_subscription(subscription)
        if not self.file.closed:
            self.writer.finish()
            self.file.close()
        if keep:
            self.partial.replace(self.path)
        else:
            self.partial.unlink(missing_ok=True)
        return {"messages": dict(self.counts), "lost": dict(self.lost)}


def recover(path: str | Path, target: str | Path | None = None) -> int:
    """Rewrite an MCAP file that was never finished (a killed recorder: no summary, maybe a torn last
    record) into a complete one, `target` (default: beside it, ``.active`` dropped); returns the messages
    kept."""
    source = Path(path)
    target = Path(target) if target is not None else source.with_name(source.name.removesuffix(".active"))
    temporary = target.with_name(target.name + ".recovering")
    kept = 0
    with open(source, "rb") as stream, open(temporary, "wb") as out:
        writer = Writer(out, compression=CompressionType.ZSTD)
        writer.start(profile="ros2", library="gato_ros (recovered)")
        schema_ids: dict[int, int] = {}
        channel_ids: dict[int, int] = {}
        # record by record, as far as the file goes (a reader that orders messages would buffer them all
        # and give up at the torn end)
        with contextlib.suppress(McapError, EOFError, ValueError):
            for record in StreamReader(stream).records:
                if isinstance(record, Schema) and record.id not in schema_ids:
                    schema_ids[record.id] = writer.register_schema(record.name, record.encoding, record.data)
                elif isinstance(record, Channel) and record.id not in channel_ids:
                    channel_ids[record.id] = writer.register_channel(
                        record.topic, record.message_encoding, schema_ids.get(record.schema_id, 0),
                        record.metadata,
                    )  # fmt: skip
                elif isinstance(record, Message) and record.channel_id in channel_ids:
                    writer.add_message(
                        channel_ids[record.channel_id], record.log_time, record.data, record.publish_time,
                        record.sequence,
                    )  # fmt: skip
                    kept += 1
        writer.finish()
    temporary.replace(target)
    if source != target:
        source.unlink(missing_ok=True)
    return kept


__all__ = ["McapTopicLog", "message_definition", "recover", "type_name"]

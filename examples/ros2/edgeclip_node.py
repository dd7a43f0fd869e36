#!/usr/bin/env python3
"""edgeclip as a ROS 2 node: zero-shot classification of a camera topic.

Subscribes to sensor_msgs/Image (sensor_msgs/CompressedImage when the topic ends in /compressed) and publishes, per
classified image, a vision_msgs/Classification (the top labels, best first, with the image's header) and the image's
embedding as a std_msgs/Float32MultiArray. README.md beside this file lists the parameters and how to run it.

This file is a thin rclpy shell: the work (parameters, message to frame, scores, message fields) is
edgeclip.stream.ros, which is tested without ROS.
"""

from __future__ import annotations

import array
import sys
from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Float32MultiArray, MultiArrayDimension, MultiArrayLayout
from vision_msgs.msg import Classification, ObjectHypothesis

from edgeclip.errors import EdgeClipError
from edgeclip.stream.ros import IMAGE_TYPES, NODE_DEFAULTS, NodeCore, NodeOutput, UnsupportedEncoding, parse_node_params
from edgeclip.stream.sources import CorruptFrame

LIVE_PARAMETERS = ("labels", "labels_file")  # the ones that may change while the node runs


def classification_msg(header: Any, out: NodeOutput) -> Classification:
    hypotheses = [ObjectHypothesis(class_id=r["class_id"], score=r["score"]) for r in out.results]
    return Classification(header=header, results=hypotheses)


def embedding_msg(out: NodeOutput) -> Float32MultiArray:
    fields = out.embedding
    assert fields is not None
    dims = [MultiArrayDimension(label=d["label"], size=d["size"], stride=d["stride"]) for d in fields["layout"]["dim"]]
    layout = MultiArrayLayout(dim=dims, data_offset=fields["layout"]["data_offset"])
    return Float32MultiArray(layout=layout, data=array.array("f", fields["data"].tobytes()))


class EdgeClipNode(Node):
    def __init__(self) -> None:
        super().__init__("edgeclip")
        # Dynamic typing: `rate:=2` (an integer) or `labels:="a, b"` (a string) are taken too, and checked below.
        for name, default in NODE_DEFAULTS.items():
            self.declare_parameter(name, default, ParameterDescriptor(dynamic_typing=True))
        self.params = parse_node_params(self._values())
        self.core = NodeCore(self.params)  # loads the model and computes the labels' bank once
        self.image_type = self.params.image_type
        kind = CompressedImage if self.image_type == IMAGE_TYPES[1] else Image
        self.classifications = self.create_publisher(Classification, self.params.classification_topic, 10)
        self.embeddings = (
            self.create_publisher(Float32MultiArray, self.params.embedding_topic, 10)
            if self.params.publish_embedding
            else None
        )
        # Sensor QoS (best effort, a short queue): a slow model classifies recent images, not a backlog.
        self.create_subscription(kind, self.params.image_topic, self.on_image, qos_profile_sensor_data)
        self.add_on_set_parameters_callback(self.on_parameters)
        rate = f"at most {self.params.rate:g}/s" if self.params.rate else "every image"
        self.get_logger().info(
            f"classifying {self.params.image_topic} ({self.image_type}, {rate}) into {len(self.core.labels)} labels; "
            f"publishing {self.params.classification_topic}"
            + (f" and {self.params.embedding_topic}" if self.embeddings is not None else "")
        )

    def _values(self) -> dict[str, Any]:
        return {name: self.get_parameter(name).value for name in NODE_DEFAULTS}

    def on_image(self, msg: Any) -> None:
        try:
            out = self.core.handle(msg, msgtype=self.image_type)
        except UnsupportedEncoding as exc:
            self.get_logger().error(str(exc), once=True)
            return
        except CorruptFrame as exc:
            self.get_logger().warning(f"image skipped: {exc}", throttle_duration_sec=5.0)
            return
        if out is None:  # left out by the rate limit
            return
        self.classifications.publish(classification_msg(msg.header, out))
        if self.embeddings is not None:
            self.embeddings.publish(embedding_msg(out))

    def on_parameters(self, parameters: list[Any]) -> SetParametersResult:
        changed = {p.name: p.value for p in parameters}
        fixed = sorted(set(changed) - set(LIVE_PARAMETERS))
        if fixed:
            return SetParametersResult(
                successful=False,
                reason=f"restart the node to change {', '.join(fixed)}; only labels and labels_file change live",
            )
        try:
            labels = self.core.set_labels(parse_node_params({**self._values(), **changed}).labels)
        except EdgeClipError as exc:
            return SetParametersResult(successful=False, reason=str(exc))
        self.get_logger().info(f"labels now: {', '.join(labels)}")
        return SetParametersResult(successful=True)


def main(args: list[str] | None = None) -> int:
    rclpy.init(args=args)
    try:
        node = EdgeClipNode()
    except EdgeClipError as exc:  # bad parameters, a missing bundle: the reason, not a traceback
        print(f"edgeclip node: {exc}", file=sys.stderr)
        rclpy.shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

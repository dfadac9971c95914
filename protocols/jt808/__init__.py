"""JT/T 808 (2011/2013/2019) codec, sans-I/O: bytes in, messages out, and back.

from protocols.jt808 import decode_frame, encode_frame, FrameSplitter

splitter = FrameSplitter()
for frame in splitter.feed(data):
    message = decode_frame(frame)            # JT808Error on anything unreadable
wire = encode_frame(PlatformGeneralResponse(reply_serial=..., reply_id=..., result=0),
                    phone=message.phone, serial=1, version=message.version)
"""

from . import areas, platform, terminal
from .areas import *  # noqa: F403
from .body import REGISTRY, Body, RawBody, Struct, jsonable
from .codec import (
    DEFAULT_PROFILE,
    MAX_BODY,
    Message,
    TerminalProfile,
    decode_body,
    decode_frame,
    encode_body,
    encode_frame,
    encode_frames,
    encode_general_response,
)
from .errors import JT808Error
from .framing import DroppedBytes, FrameSplitter, check_code, escape, unescape
from .header import V2011, V2013, V2019, Header
from .location import ALARM_BITS, STATUS_BITS, LocationReport, alarm_names, status_flags
from .location_items import encode_items, interpret_items
from .params import PARAM_NAMES, PARAM_TYPES, Param
from .platform import *  # noqa: F403
from .subpackage import PendingMessage, Reassembler, ReassemblyBudget, resend_batches
from .terminal import *  # noqa: F403
from .wire import BEIJING

__all__ = [
    "ALARM_BITS",
    "BEIJING",
    "DEFAULT_PROFILE",
    "MAX_BODY",
    "PARAM_NAMES",
    "PARAM_TYPES",
    "REGISTRY",
    "STATUS_BITS",
    "V2011",
    "V2013",
    "V2019",
    "Body",
    "DroppedBytes",
    "FrameSplitter",
    "Header",
    "JT808Error",
    "LocationReport",
    "Message",
    "Param",
    "PendingMessage",
    "RawBody",
    "Reassembler",
    "ReassemblyBudget",
    "Struct",
    "TerminalProfile",
    "alarm_names",
    "check_code",
    "decode_body",
    "decode_frame",
    "encode_body",
    "encode_frame",
    "encode_frames",
    "encode_general_response",
    "encode_items",
    "escape",
    "interpret_items",
    "jsonable",
    "resend_batches",
    "status_flags",
    "unescape",
    *areas.__all__,
    *platform.__all__,
    *terminal.__all__,
]

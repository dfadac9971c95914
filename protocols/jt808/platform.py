"""Platform → terminal message bodies (areas and routes are in ``areas``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from .body import (
    MSG_ID,
    U8,
    U16,
    U32,
    UTC_TIME,
    Body,
    Edition,
    Many,
    Raw,
    Struct,
    Text,
    Time,
    empty_body,
    message,
    only_2019,
    wire,
)
from .params import PARAM, Param

#: 0x8001 / 0x0001 result codes.
RESULT_OK, RESULT_FAILED, RESULT_MESSAGE_ERROR, RESULT_UNSUPPORTED, RESULT_ALARM_CONFIRMED = range(
    5
)
#: 0x8100 result codes.
(
    REGISTER_OK,
    REGISTER_VEHICLE_TAKEN,
    REGISTER_NO_VEHICLE,
    REGISTER_TERMINAL_TAKEN,
    REGISTER_NO_TERMINAL,
) = range(5)


@message(0x8001)
@dataclass(slots=True, kw_only=True)
class PlatformGeneralResponse(Body):
    reply_serial: int = wire(U16)
    reply_id: int = wire(MSG_ID)
    result: int = wire(U8)  # 0 ok, 1 failed, 2 message error, 3 unsupported, 4 alarm confirmed


@message(0x8003)
@dataclass(slots=True, kw_only=True)
class ResendSubpackages(Body):
    """Ask for subpackages again: count is a BYTE in 2011/2013 and a WORD in 2019."""

    orig_serial: int = wire(U16)
    ids: list[int] = wire(
        Edition(v2011=Many(U16, U8), v2013=Many(U16, U8), v2019=Many(U16, U16)), factory=list
    )


@message(0x8004)
@dataclass(slots=True, kw_only=True)
class ServerTime(Body):
    """2019 answer to 0x0004: the platform's time in UTC."""

    time: datetime = wire(UTC_TIME)


@message(0x8100)
@dataclass(slots=True, kw_only=True)
class RegisterResponse(Body):
    reply_serial: int = wire(U16)
    result: int = wire(U8)
    auth_code: str = wire(Text(), default="")  # only sent when the result is 0


@message(0x8103)
@dataclass(slots=True, kw_only=True)
class SetParameters(Body):
    params: list[Param] = wire(Many(PARAM, count=U8), factory=list)


QueryAllParameters = empty_body("QueryAllParameters", 0x8104, __name__)


@message(0x8105)
@dataclass(slots=True, kw_only=True)
class TerminalControl(Body):
    """1 upgrade, 2 connect to server, 3 power off, 4 reset, 5 factory reset, 6 close data
    link, 7 close all radio; ``params`` is the ';'-separated argument string."""

    command: int = wire(U8)
    params: str = wire(Text(), default="")


@message(0x8106)
@dataclass(slots=True, kw_only=True)
class QueryParameters(Body):
    ids: list[int] = wire(Many(U32, U8), factory=list)


QueryAttributes = empty_body("QueryAttributes", 0x8107, __name__)


@message(0x8108)
@dataclass(slots=True, kw_only=True)
class UpgradePackage(Body):
    upgrade_type: int = wire(U8)
    maker_id: str = wire(Text(5))
    version: str = wire(Text(prefix=1))
    data: bytes = wire(Raw(prefix=4))


QueryLocation = empty_body("QueryLocation", 0x8201, __name__)


@message(0x8202)
@dataclass(slots=True, kw_only=True)
class TemporaryTracking(Body):
    interval_s: int = wire(U16)  # 0 stops tracking
    validity_s: int = wire(U32)


@message(0x8203)
@dataclass(slots=True, kw_only=True)
class AlarmConfirmation(Body):
    """Manual confirmation of alarms that stay set until the platform acknowledges them."""

    alarm_serial: int = wire(U16)  # 0 = every alarm of these types
    alarm_type: int = wire(U32)  # bits 0, 3, 20, 21, 22, 27, 28 of the alarm word


TEXT_URGENT, TEXT_DISPLAY, TEXT_TTS, TEXT_AD_SCREEN = 0x01, 0x04, 0x08, 0x10


@message(0x8300)
@dataclass(slots=True, kw_only=True)
class TextMessage(Body):
    """Text to the terminal's display and/or read aloud (``flag`` bit 3, TTS); 2019 adds a
    text type (1 notice, 2 service)."""

    flag: int = wire(U8)
    text_type: int | None = wire(only_2019(U8))
    text: str = wire(Text(), default="")


@dataclass(slots=True, kw_only=True)
class EventItem(Struct):
    event_id: int = wire(U8)
    content: str = wire(Text(prefix=1))


@message(0x8301)
@dataclass(slots=True, kw_only=True)
class EventSetting(Body):
    setting_type: int = wire(U8)  # 0 delete all, 1 update, 2 append, 3 modify, 4 delete some
    events: list[EventItem] = wire(Many(EventItem), factory=list)


@dataclass(slots=True, kw_only=True)
class AnswerOption(Struct):
    answer_id: int = wire(U8)
    content: str = wire(Text(prefix=2))


@message(0x8302)
@dataclass(slots=True, kw_only=True)
class Question(Body):
    flag: int = wire(U8)
    question: str = wire(Text(prefix=1))
    answers: list[AnswerOption] = wire(Many(AnswerOption, count=None), factory=list)


@dataclass(slots=True, kw_only=True)
class InfoMenuItem(Struct):
    info_type: int = wire(U8)
    name: str = wire(Text(prefix=2))


@message(0x8303)
@dataclass(slots=True, kw_only=True)
class InfoMenu(Body):
    setting_type: int = wire(U8)
    items: list[InfoMenuItem] = wire(Many(InfoMenuItem), factory=list)


@message(0x8304)
@dataclass(slots=True, kw_only=True)
class InfoService(Body):
    info_type: int = wire(U8)
    content: str = wire(Text(prefix=2))


@message(0x8400)
@dataclass(slots=True, kw_only=True)
class CallBack(Body):
    flag: int = wire(U8)  # 0 normal call, 1 listen in
    phone: str = wire(Text())


@dataclass(slots=True, kw_only=True)
class Contact(Struct):
    flag: int = wire(U8)  # 1 incoming, 2 outgoing, 3 both
    phone: str = wire(Text(prefix=1))
    name: str = wire(Text(prefix=1))


@message(0x8401)
@dataclass(slots=True, kw_only=True)
class PhoneBook(Body):
    setting_type: int = wire(U8)
    contacts: list[Contact] = wire(Many(Contact), factory=list)


@message(0x8500)
@dataclass(slots=True, kw_only=True)
class VehicleControl(Body):
    """2013: flag bit 0 locks (1) or unlocks the doors. 2019: a control type (1 door lock)
    precedes the flag."""

    control_type: int | None = wire(only_2019(U16))
    flag: int = wire(U8)


RequestDriverIdentity = empty_body("RequestDriverIdentity", 0x8702, __name__)


@message(0x8800)
@dataclass(slots=True, kw_only=True)
class MediaUploadResponse(Body):
    """Answer to a complete 0x0801: the package indexes still missing (none = done)."""

    media_id: int = wire(U32)
    missing: list[int] = wire(Many(U16, U8), factory=list)


@message(0x8801)
@dataclass(slots=True, kw_only=True)
class CameraShoot(Body):
    channel: int = wire(U8)
    command: int = wire(U16)  # 0 stop, 0xFFFF record video, n photos
    interval_s: int = wire(U16)
    save: int = wire(U8)  # 1 save on the terminal, 0 upload now
    resolution: int = wire(U8)
    quality: int = wire(U8)  # 1 best .. 10
    brightness: int = wire(U8)
    contrast: int = wire(U8)
    saturation: int = wire(U8)
    chroma: int = wire(U8)


@message(0x8802)
@dataclass(slots=True, kw_only=True)
class MediaSearch(Body):
    media_type: int = wire(U8)
    channel: int = wire(U8)  # 0 all
    event: int = wire(U8)
    start: datetime | str | None = wire(Time(partial=True))
    end: datetime | str | None = wire(Time(partial=True))


@message(0x8803)
@dataclass(slots=True, kw_only=True)
class UploadStoredMedia(MediaSearch):
    """Upload the stored media matching a search; ``delete`` removes them afterwards."""

    delete: int = wire(U8)


@message(0x8900)
@dataclass(slots=True, kw_only=True)
class TransparentDownlink(Body):
    data_type: int = wire(U8)
    data: bytes = wire(Raw(), default=b"")


__all__ = [
    "REGISTER_NO_TERMINAL",
    "REGISTER_NO_VEHICLE",
    "REGISTER_OK",
    "REGISTER_TERMINAL_TAKEN",
    "REGISTER_VEHICLE_TAKEN",
    "RESULT_ALARM_CONFIRMED",
    "RESULT_FAILED",
    "RESULT_MESSAGE_ERROR",
    "RESULT_OK",
    "RESULT_UNSUPPORTED",
    "TEXT_AD_SCREEN",
    "TEXT_DISPLAY",
    "TEXT_TTS",
    "TEXT_URGENT",
    "AlarmConfirmation",
    "AnswerOption",
    "CallBack",
    "CameraShoot",
    "Contact",
    "EventItem",
    "EventSetting",
    "InfoMenu",
    "InfoMenuItem",
    "InfoService",
    "MediaSearch",
    "MediaUploadResponse",
    "PhoneBook",
    "PlatformGeneralResponse",
    "QueryAllParameters",
    "QueryAttributes",
    "QueryLocation",
    "QueryParameters",
    "Question",
    "RegisterResponse",
    "RequestDriverIdentity",
    "ResendSubpackages",
    "ServerTime",
    "SetParameters",
    "TemporaryTracking",
    "TerminalControl",
    "TextMessage",
    "TransparentDownlink",
    "UpgradePackage",
    "UploadStoredMedia",
    "VehicleControl",
]

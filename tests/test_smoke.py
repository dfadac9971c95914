from protocols.jt808 import Heartbeat, decode_frame, encode_frame


def test_heartbeat_round_trip() -> None:
    frame = encode_frame(Heartbeat(), phone="12345678900", serial=10)
    assert frame == bytes.fromhex("7E00020000012345678900000A817E")
    assert decode_frame(frame).serial == 10

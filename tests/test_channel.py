"""The template agents' end of their pipe: frames as multiprocessing.Connection lays them out."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from guildcore.engine.channel import Channel
from guildcore.engine.wire import FrameReader, FrameWriter


def _pair() -> tuple[Channel, socket.socket]:
    mine, theirs = socket.socketpair()
    return Channel(mine.detach()), theirs


def test_frames_sent_by_a_channel_are_read_whole_by_the_supervisors_reader() -> None:
    chan, sup = _pair()
    frames = [b"", b"x", os.urandom(16 * 1024), os.urandom(300_000)]
    got: list[bytes] = []

    def send() -> None:
        for frame in frames:
            chan.send_bytes(frame)
        chan.close()

    sender = threading.Thread(target=send)
    sender.start()
    reader = FrameReader(sup.fileno())
    while not reader.eof:
        got += [bytes(f) for f in reader.read()]
    sender.join()
    sup.close()
    assert got == frames


def test_a_channel_reads_what_the_supervisors_writer_writes_then_eof() -> None:
    chan, sup = _pair()
    frames = [b"task", os.urandom(200_000)]
    writer = FrameWriter(sup.fileno())

    def write() -> None:
        for frame in frames:
            writer.send(frame)
            while writer.pending:
                writer.flush()
        sup.close()

    t = threading.Thread(target=write)
    t.start()
    assert [chan.recv_bytes() for _ in frames] == frames
    with pytest.raises(EOFError):
        chan.recv_bytes()
    t.join()
    chan.close()


def test_an_end_inside_a_frame_and_a_closed_channel_are_oserrors() -> None:
    chan, sup = _pair()
    sup.sendall(b"\x00\x00\x00\x10half")
    sup.close()
    with pytest.raises(OSError, match="end of file during message"):
        chan.recv_bytes()
    chan.close()
    chan.close()  # idempotent
    with pytest.raises(OSError):
        chan.send_bytes(b"late")


def test_a_frame_of_2_gib_or_more_gets_the_long_header() -> None:
    chan, sup = _pair()
    # The header only: a 2 GiB frame is announced as -1 then its 8-byte length.
    sup.sendall(b"\xff\xff\xff\xff" + (5).to_bytes(8, "big") + b"hello")
    assert chan.recv_bytes() == b"hello"
    sup.close()
    chan.close()

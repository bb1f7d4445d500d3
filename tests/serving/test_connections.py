"""Idle connections: the REST keep-alive timeout (--rest_api_keep_alive_timeout_seconds) and gRPC's
idle-connection argument (--grpc_channel_arguments=grpc.max_connection_idle_ms=N), on real sockets.

A close is waited for on the socket itself (recv returns b"" or the connection is reset), with
HANG_GUARD as the socket timeout: the wait ends when the server acts, not after a fixed time.
"""
from __future__ import annotations

import argparse
import socket
import threading
import time

import grpc
import pytest
from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

from serving import cli
from serving.server import ServerThread
from serving.settings import DEFAULT_REST_API_KEEP_ALIVE_TIMEOUT_SECONDS, SettingsError, parse_grpc_channel_arguments
from tests.serving.conftest import HANG_GUARD, install_version, make_settings

pytestmark = pytest.mark.timeout(180)

KEEP_ALIVE_S = 2
STATUS_REQUEST = b"GET /v1/models/m HTTP/1.1\r\nHost: localhost\r\n\r\n"


@pytest.fixture(scope="module")
def keep_alive_server(model_store, tmp_path_factory):
    base = tmp_path_factory.mktemp("keep_alive") / "m"
    install_version(model_store["half_plus_two"], base, 1)
    server = ServerThread(make_settings(model_name="m", model_base_path=str(base),
                                        rest_api_keep_alive_timeout_seconds=KEEP_ALIVE_S)).start()
    yield server
    server.stop()


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.server.rest_port), timeout=HANG_GUARD)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_response(sock: socket.socket) -> bytes:
    """One whole HTTP response (head and Content-Length body) off a keep-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed mid-response after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    assert len(body) == length, "the server sent more than one response"
    return head


# Allowance for the server's timer firing early: well above the event loop's clock resolution.
EARLY_S = 0.05


def seconds_until_closed(sock: socket.socket, since: float) -> float:
    """Block until the server closes the connection (EOF or reset); the seconds from `since` (monotonic).

    Callers take `since` before the step that starts the server's timer (connecting, or sending the
    request whose response does), so the figure is never less than the timeout, however late this
    thread gets to run on a loaded machine."""
    try:
        data = sock.recv(1024)
    except ConnectionResetError:
        data = b""
    except socket.timeout:
        pytest.fail(f"the server kept an idle connection open for {HANG_GUARD:g} s")
    assert data == b"", f"unexpected bytes on an idle connection: {data!r}"
    return time.monotonic() - since


def test_idle_connection_is_closed_after_the_timeout(keep_alive_server):
    with connect(keep_alive_server) as sock:
        sent = time.monotonic()
        sock.sendall(STATUS_REQUEST)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        # The server's timer starts when the response is complete, after `sent`.
        assert seconds_until_closed(sock, since=sent) >= KEEP_ALIVE_S - EARLY_S


def test_connection_without_a_request_is_closed(keep_alive_server):
    started = time.monotonic()
    with connect(keep_alive_server) as sock:
        assert seconds_until_closed(sock, since=started) >= KEEP_ALIVE_S - EARLY_S


def test_connection_with_part_of_a_request_is_closed(keep_alive_server):
    started = time.monotonic()
    with connect(keep_alive_server) as sock:
        sock.sendall(STATUS_REQUEST[:-2])  # headers never finished
        assert seconds_until_closed(sock, since=started) >= KEEP_ALIVE_S - EARLY_S


def test_active_connection_stays_open(keep_alive_server):
    """Requests closer together than the timeout keep one connection open for longer than the timeout."""
    gap = KEEP_ALIVE_S / 8
    with connect(keep_alive_server) as sock:
        started = time.monotonic()
        answered = 0
        while time.monotonic() - started < 2 * KEEP_ALIVE_S:
            sock.sendall(STATUS_REQUEST)
            assert read_response(sock).startswith(b"HTTP/1.1 200"), f"after {answered} answers"
            answered += 1
            time.sleep(gap)  # the client's pace, well inside the timeout
        # Still the same connection, and still open: one more request is answered on it.
        sent = time.monotonic()
        sock.sendall(STATUS_REQUEST)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        assert seconds_until_closed(sock, since=sent) >= KEEP_ALIVE_S - EARLY_S


def test_grpc_connection_idle_argument_closes_idle_connections(model_store, tmp_path, start_server):
    """grpc.max_connection_idle_ms: the server sends GOAWAY to a connection without RPCs; the
    client's channel goes IDLE and its next RPC reconnects."""
    base = tmp_path / "m"
    install_version(model_store["half_plus_two"], base, 1)
    server = start_server(make_settings(model_name="m", model_base_path=str(base),
                                        grpc_channel_arguments="grpc.max_connection_idle_ms=1000"))
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = "m"
    states, went_idle, ready = [], threading.Event(), threading.Event()

    def watch(state: grpc.ChannelConnectivity) -> None:
        states.append(state)
        if state == grpc.ChannelConnectivity.READY:
            ready.set()
        elif state == grpc.ChannelConnectivity.IDLE and ready.is_set():
            went_idle.set()

    with grpc.insecure_channel(server.grpc_target) as channel:
        channel.subscribe(watch)
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        assert stub.GetModelStatus(request, timeout=30).model_version_status[0].version == 1
        assert went_idle.wait(HANG_GUARD), f"channel states: {states}"
        assert stub.GetModelStatus(request, timeout=30).model_version_status[0].version == 1
        channel.unsubscribe(watch)


def test_flags():
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    defaults = cli.settings_from_args(parser.parse_args(["--model_base_path=/m"]), environ={})
    assert defaults.rest_api_keep_alive_timeout_seconds == DEFAULT_REST_API_KEEP_ALIVE_TIMEOUT_SECONDS
    assert defaults.grpc_options == ()
    assert not any("grpc_channel_arguments" in arg for arg in cli.tensorflow_model_server_argv(defaults))

    settings = cli.settings_from_args(parser.parse_args([
        "--model_base_path=/m", "--rest_api_keep_alive_timeout_seconds=5",
        "--grpc_channel_arguments=grpc.max_connection_idle_ms=60000,grpc.primary_user_agent=signflow"]), environ={})
    assert settings.rest_api_keep_alive_timeout_seconds == 5
    assert settings.grpc_options == (("grpc.max_connection_idle_ms", 60000), ("grpc.primary_user_agent", "signflow"))
    argv = cli.tensorflow_model_server_argv(settings)
    assert "--grpc_channel_arguments=grpc.max_connection_idle_ms=60000,grpc.primary_user_agent=signflow" in argv
    assert not any("keep_alive" in arg for arg in argv)  # TF Serving has no such flag

    with pytest.raises(SettingsError, match="--rest_api_keep_alive_timeout_seconds must be positive"):
        cli.settings_from_args(parser.parse_args(["--model_base_path=/m", "--rest_api_keep_alive_timeout_seconds=0"]),
                               environ={})


@pytest.mark.parametrize("text, parsed", [
    ("", ()),
    ("grpc.max_connection_idle_ms=1000", (("grpc.max_connection_idle_ms", 1000),)),
    (" a = -3 , b=x1 ", (("a", -3), ("b", "x1"))),
    ("big=4294967296", (("big", "4294967296"),)),  # not a 32-bit integer: passed as a string, as TF Serving does
])
def test_grpc_channel_arguments_parse_as_tf_serving(text, parsed):
    assert parse_grpc_channel_arguments(text) == parsed


@pytest.mark.parametrize("text", ["grpc.max_connection_idle_ms", "=5", "a=1,", "a=b=c"])
def test_grpc_channel_arguments_refuse_malformed(text):
    with pytest.raises(SettingsError, match="--grpc_channel_arguments: expected key=value"):
        parse_grpc_channel_arguments(text)

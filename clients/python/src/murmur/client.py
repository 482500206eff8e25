"""The murmur client: HTTP/1.1 + JSON over the daemon's Unix socket, standard library only.

Every call opens its own connection (a Unix socket connect is cheap), so a
:class:`Client` may be shared between threads and never meets a keep-alive
connection the daemon closed for idleness.
"""

import base64
import http.client
import json
import os
import socket
import urllib.parse
from collections import deque
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

__all__ = [
    "Client",
    "Event",
    "Follow",
    "MurmurError",
    "MurmurUnavailable",
    "Published",
    "default_socket",
]

Data = Union[bytes, bytearray, memoryview, str]

SOCKET_FILE = "murmur.sock"
# Where the packaged service keeps its data; used, as the CLI does, when the user has
# no data directory of their own and the service's config exists.
_SYSTEM_CONFIG = "/etc/murmur/murmur.toml"
_SYSTEM_DATA_DIR = "/var/lib/murmur"
_HINT = "is the daemon running? start it with `murmur daemon`, or point MURMUR_SOCKET at its socket"


class MurmurError(Exception):
    """The daemon refused a request: ``status`` (HTTP status), ``code`` (the stable
    machine-readable code of the error body, e.g. ``invalid_topic``, ``reserved_topic``,
    ``queue_full``) and ``message`` (for people).

    ``retry_after`` holds the seconds of a ``Retry-After`` header (503 answers such as
    ``queue_full`` and ``shutting_down``), else ``None``. A refused request stored
    nothing; a refused batch stored none of its events.
    """

    def __init__(self, status: Optional[int], code: str, message: str,
                 retry_after: Optional[float] = None) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __str__(self) -> str:
        if self.status is None:
            return f"{self.message} [{self.code}]"
        return f"{self.status} {self.code}: {self.message}"


class MurmurUnavailable(MurmurError):
    """No daemon answers on the socket (missing, refused, permission denied), or the
    connection broke mid-request. ``status`` is ``None``; ``code`` is ``not_running``,
    ``permission_denied`` or ``connection_lost``.

    After ``connection_lost`` on a publish the event may or may not have been stored.
    """

    def __init__(self, code: str, message: str, socket_path: str) -> None:
        super().__init__(None, code, message)
        self.socket_path = socket_path


@dataclass(frozen=True)
class Published:
    """A publish acknowledged by the daemon: durable once you hold this.

    ``seq`` is the position in this node's log for the topic, ``offset`` the local
    arrival offset (what :meth:`Client.read` and :meth:`Client.follow` take),
    ``time_ms``/``time_logical`` the hybrid logical clock time.
    """

    id: str
    author: str
    topic: str
    seq: int
    offset: int
    time_ms: int
    time_logical: int = 0

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Published":
        """Builds one from the daemon's ``Published`` JSON object."""
        t = d.get("time") or {}
        return cls(id=d["id"], author=d["author"], topic=d["topic"], seq=d["seq"],
                   offset=d["offset"], time_ms=t.get("ms", 0),
                   time_logical=t.get("logical", 0))


@dataclass(frozen=True)
class Event:
    """A stored event, as reads and follow streams return it.

    ``data`` holds the payload bytes (decoded from the wire's ``utf8`` or ``base64``
    encoding); :meth:`text` and :meth:`json` decode it further. ``kind`` is ``data``
    or ``doc`` (a document change, whose ``data`` is automerge change bytes and whose
    ``doc`` names the document). ``offset`` is ``None`` for events read by log
    (:meth:`Client.log`); ``prev`` is ``None`` at seq 0.
    """

    offset: Optional[int]
    id: str
    author: str
    topic: str
    seq: int
    prev: Optional[str]
    time_ms: int
    time_logical: int
    kind: str
    content_type: Optional[str]
    doc: Optional[str]
    data: bytes

    @classmethod
    def from_json(cls, d: Dict[str, Any]) -> "Event":
        """Builds one from the daemon's ``EventJson`` object (unknown fields ignored)."""
        raw = d.get("data", "")
        if d.get("encoding") == "base64":
            data = base64.b64decode(raw)
        else:
            data = raw.encode("utf-8")
        t = d.get("time") or {}
        return cls(offset=d.get("offset"), id=d["id"], author=d["author"],
                   topic=d["topic"], seq=d["seq"], prev=d.get("prev"),
                   time_ms=t.get("ms", 0), time_logical=t.get("logical", 0),
                   kind=d.get("kind", "data"), content_type=d.get("content_type"),
                   doc=d.get("doc"), data=data)

    def text(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The payload as text."""
        return self.data.decode(encoding, errors)

    def json(self) -> Any:
        """The payload parsed as JSON."""
        return json.loads(self.data)


def default_socket(data_dir: Optional[str] = None) -> str:
    """The socket path a :class:`Client` uses when given none.

    In order: ``data_dir``/murmur.sock if ``data_dir`` is given; ``$MURMUR_SOCKET``;
    ``$MURMUR_DATA_DIR``/murmur.sock; ``$XDG_DATA_HOME/murmur/murmur.sock`` (usually
    ``~/.local/share/murmur/murmur.sock``), or ``/var/lib/murmur/murmur.sock`` when that
    data directory does not exist and the packaged service's ``/etc/murmur/murmur.toml``
    does. A socket moved elsewhere with ``api.socket`` in the config must be given
    explicitly (or through ``MURMUR_SOCKET``).
    """
    if data_dir is not None:
        return os.path.join(os.fspath(data_dir), SOCKET_FILE)
    env = os.environ.get("MURMUR_SOCKET")
    if env:
        return env
    env = os.environ.get("MURMUR_DATA_DIR")
    if env:
        return os.path.join(env, SOCKET_FILE)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share")
    user_dir = os.path.join(base, "murmur")
    if not os.path.exists(user_dir) and os.path.exists(_SYSTEM_CONFIG):
        return os.path.join(_SYSTEM_DATA_DIR, SOCKET_FILE)
    return os.path.join(user_dir, SOCKET_FILE)


class _UnixHTTPConnection(http.client.HTTPConnection):
    """``http.client.HTTPConnection`` over a Unix socket."""

    def __init__(self, path: str, timeout: Optional[float]) -> None:
        super().__init__("murmur", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except FileNotFoundError:
            sock.close()
            raise MurmurUnavailable(
                "not_running", f"no murmur daemon socket at {self.unix_path}: {_HINT}",
                self.unix_path) from None
        except ConnectionRefusedError:
            sock.close()
            raise MurmurUnavailable(
                "not_running", f"nothing listens on {self.unix_path}: {_HINT}",
                self.unix_path) from None
        except PermissionError:
            sock.close()
            raise MurmurUnavailable(
                "permission_denied",
                f"permission denied on {self.unix_path} (the socket is mode 0600: "
                "run as the daemon's user)", self.unix_path) from None
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _query(params: Dict[str, Any]) -> str:
    """URL-encodes the non-``None`` parameters (``#`` as %23, ``+`` as %2B)."""
    items = [(k, ("true" if v is True else "false" if v is False else v))
             for k, v in params.items() if v is not None]
    if not items:
        return ""
    return "?" + urllib.parse.urlencode(items, quote_via=urllib.parse.quote, safe="/")


def _payload(data: Data) -> Dict[str, str]:
    if isinstance(data, str):
        return {"data": data}
    if isinstance(data, (bytes, bytearray, memoryview)):
        return {"data_b64": base64.b64encode(bytes(data)).decode("ascii")}
    raise TypeError(f"data must be bytes or str, not {type(data).__name__}")


def _publish_request(topic: str, data: Data, content_type: Optional[str],
                     idempotency_key: Optional[str] = None) -> Dict[str, str]:
    req = {"topic": topic}
    req.update(_payload(data))
    if content_type is not None:
        req["content_type"] = content_type
    if idempotency_key is not None:
        req["idempotency_key"] = idempotency_key
    return req


def _consumer_path(name: str) -> str:
    """``/v1/consumers/NAME``, the name URL-encoded whole (a ``/`` goes as %2F, part of
    the name, which the daemon then refuses as ``bad_consumer``)."""
    return "/v1/consumers/" + urllib.parse.quote(name, safe="")


def _error_from(status: int, body: bytes, headers: Any) -> MurmurError:
    retry = headers.get("Retry-After") if headers is not None else None
    try:
        retry_after: Optional[float] = float(retry) if retry is not None else None
    except ValueError:
        retry_after = None
    try:
        d = json.loads(body)
        return MurmurError(status, str(d["code"]), str(d["error"]), retry_after)
    except (ValueError, KeyError, TypeError):
        text = body.decode("utf-8", "replace").strip() or http.client.responses.get(status, "")
        return MurmurError(status, f"http_{status}", text, retry_after)


class Client:
    """A client of one murmur daemon.

    ``socket`` is the daemon's control socket; without it, ``data_dir``/murmur.sock,
    else the environment and defaults (see :func:`default_socket`). ``timeout`` (seconds)
    bounds connecting and each request; :meth:`follow` has its own ``idle_timeout``.
    Nothing is connected until the first call.
    """

    def __init__(self, socket: Optional[str] = None, data_dir: Optional[str] = None,
                 timeout: Optional[float] = 30.0) -> None:
        self.socket_path = os.fspath(socket) if socket is not None else default_socket(data_dir)
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Client(socket={self.socket_path!r})"

    # --- transport ---

    def _send(self, method: str, path: str, body: Optional[Any]) -> Tuple[
            _UnixHTTPConnection, http.client.HTTPResponse]:
        conn = _UnixHTTPConnection(self.socket_path, self.timeout)
        headers = {"Accept": "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, path, body=payload, headers=headers)
            resp = conn.getresponse()
        except MurmurError:
            conn.close()
            raise
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            if isinstance(e, socket.timeout):
                raise MurmurUnavailable(
                    "connection_lost",
                    f"the daemon at {self.socket_path} did not answer {method} "
                    f"{path.split('?')[0]} within {self.timeout}s", self.socket_path) from e
            raise MurmurUnavailable(
                "connection_lost",
                f"the connection to the daemon at {self.socket_path} broke: {e}",
                self.socket_path) from e
        return conn, resp

    def _request(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        conn, resp = self._send(method, path, body)
        try:
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            raise MurmurUnavailable(
                "connection_lost",
                f"the connection to the daemon at {self.socket_path} broke: {e}",
                self.socket_path) from e
        finally:
            conn.close()
        if resp.status >= 400:
            raise _error_from(resp.status, data, resp.headers)
        return json.loads(data) if data else None

    # --- events ---

    def publish(self, topic: str, data: Data, content_type: Optional[str] = None,
                idempotency_key: Optional[str] = None) -> Published:
        """Publishes one event and returns it once durable.

        ``str`` data goes as UTF-8 text, ``bytes`` as base64 (any bytes round-trip).
        ``content_type`` is an optional MIME type kept with the event.
        ``idempotency_key`` (1-128 printable ASCII bytes): a retry with the same key,
        within the daemon's ``api.idempotency_window``, returns what the first call
        stored and stores nothing, so retrying after a lost answer is safe.
        """
        return Published.from_json(self._request(
            "POST", "/v1/events",
            _publish_request(topic, data, content_type, idempotency_key)))

    def publish_batch(self, events: Iterable[Sequence[Any]]) -> List[Published]:
        """Publishes ``(topic, data)`` or ``(topic, data, content_type)`` tuples
        atomically in one request (one disk sync): all are stored, in order, or none
        (a :class:`MurmurError` whose message names the first bad event). The daemon
        takes at most ``api.max_batch_events`` (default 10,000) events per batch,
        and ``api.max_request_bytes`` (default 16 MiB) per request.
        """
        reqs = []
        for e in events:
            if not 2 <= len(e) <= 3:
                raise ValueError("each batch item is (topic, data) or (topic, data, content_type)")
            reqs.append(_publish_request(e[0], e[1], e[2] if len(e) == 3 else None))
        answer = self._request("POST", "/v1/events/batch", {"events": reqs})
        return [Published.from_json(p) for p in answer["events"]]

    def read(self, pattern: Optional[str] = None, from_offset: int = 0,
             limit: int = 100) -> Tuple[List[Event], int]:
        """Reads stored events in local arrival order from ``from_offset``, filtered by
        an MQTT-style ``pattern`` (``sensors/+/temp``, ``fleet/#``; ``None``: every
        topic, the node's own ``$fleet/…`` ones included, which ``#`` leaves out).

        Returns ``(events, next_offset)``: pass ``next_offset`` back to read on. Fewer
        than ``limit`` events does not mean the end; an empty page does.
        """
        page = self._request("GET", "/v1/events" + _query(
            {"pattern": pattern, "from": from_offset, "limit": limit}))
        return [Event.from_json(e) for e in page["events"]], page["next"]

    def log(self, topic: str, author: Optional[str] = None, from_seq: int = 0,
            limit: int = 100) -> Tuple[List[Event], int]:
        """Reads one log (one author's events in ``topic``, by seq) from ``from_seq``;
        ``author`` (hex) defaults to this node. Returns ``(events, next_seq)``; the
        events carry no ``offset``.
        """
        page = self._request("GET", "/v1/log" + _query(
            {"topic": topic, "author": author, "from": from_seq, "limit": limit}))
        return [Event.from_json(e) for e in page["events"]], page["next"]

    def event(self, event_id: str) -> Event:
        """One event by id (hex); :class:`MurmurError` ``not_found`` if not held."""
        return Event.from_json(self._request("GET", "/v1/events/" + urllib.parse.quote(event_id)))

    def follow(self, pattern: Optional[str] = "#", from_offset: Optional[int] = None,
               idle_timeout: Optional[float] = None, skip_pruned: bool = False,
               consumer: Optional[str] = None, ack: Optional[str] = None) -> "Follow":
        """Follows events live: returns a :class:`Follow`, an iterator of
        :class:`Event` that yields the stored events from ``from_offset`` on and then
        each new one as it is stored, holding one connection open.

        ``from_offset=None`` starts at the next new event. ``pattern`` as in
        :meth:`read` (default ``#``: every application topic). Reads block until an
        event comes: with ``idle_timeout`` (seconds) the iterator raises
        :class:`TimeoutError` (and closes) when none came for that long. The iterator
        ends when the daemon ends the stream (it shuts down). ``close()`` it, or use it
        as a context manager, to close the connection.

        Resume after a disconnect with ``follow(pattern, from_offset=last.offset + 1)``
        (or ``Follow.next_offset``). If retention pruned events of the pattern from
        ``from_offset`` on, the daemon answers 410 ``pruned``; ``skip_pruned=True``
        reads on without them.

        ``consumer`` names a cursor the daemon keeps (1-64 of ``A-Z a-z 0-9 . _ -``,
        else 400 ``bad_consumer``), so the position survives a restart of the client:
        a new consumer starts at new events (or ``from_offset``) and keeps ``pattern``
        for good (another pattern later: 409 ``consumer_pattern``; ``pattern=None``
        follows an existing consumer with its own); an existing one resumes at the first
        offset it has not acknowledged, so what it received and did not acknowledge
        comes again, and ``from_offset`` moves its cursor (a replay or a skip).
        Acknowledge with :meth:`ack` (``ack=None`` or ``"explicit"``), or pass
        ``ack="auto"`` to have the daemon acknowledge each page of events it sent once
        the connection takes the next (events buffered but not yet handled when the
        client dies are then not sent again). A consumer has one stream: a
        new follow of it ends the older stream (whose iteration then ends), and so does
        :meth:`delete_consumer`. 409 ``too_many_consumers`` when ``api.max_consumers``
        exist.
        """
        path = "/v1/follow" + _query({
            "pattern": pattern, "from": from_offset, "format": "ndjson",
            "skip_pruned": True if skip_pruned else None,
            "consumer": consumer, "ack": ack})
        conn, resp = self._send("GET", path, None)
        if resp.status >= 400:
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException):
                body = b""
            conn.close()
            raise _error_from(resp.status, body, resp.headers)
        return Follow(conn, resp, idle_timeout, from_offset)

    # --- named consumers ---

    def ack(self, consumer: str, offset: int) -> Dict[str, Any]:
        """Acknowledges, for ``consumer``, the event at ``offset`` and every one before
        it (acknowledgements are cumulative and never move the cursor back): a follow of
        the consumer resumes after it. Returns the consumer (see :meth:`consumer`).

        :class:`MurmurError` 400 ``bad_offset`` past the newest event, 404
        ``no_consumer`` for a consumer that does not exist.
        """
        return self._request("POST", _consumer_path(consumer) + "/ack", {"offset": offset})

    def consumers(self) -> Dict[str, Any]:
        """``{"consumers": [...], "max": N}``: every named consumer, by name, and the
        most that may exist (``api.max_consumers``). Each is as :meth:`consumer`
        returns it."""
        return self._request("GET", "/v1/consumers")

    def consumer(self, name: str) -> Dict[str, Any]:
        """One named consumer: ``name``, ``pattern`` (absent: every topic), ``next``
        (the first offset not acknowledged: a follow of it starts there), ``pending``
        (events of its pattern from ``next`` on; a lower bound when ``pending_exact`` is
        false), ``streaming`` (a follow reads it now), ``created_ms`` and ``acked_ms``
        (when its cursor last moved). :class:`MurmurError` 404 ``no_consumer`` if absent.
        """
        return self._request("GET", _consumer_path(name))

    def delete_consumer(self, name: str) -> None:
        """Deletes a named consumer (its stream ends; the events stay).
        :class:`MurmurError` 404 ``no_consumer`` if absent."""
        self._request("DELETE", _consumer_path(name))

    # --- node ---

    def status(self) -> Dict[str, Any]:
        """The node's status (``GET /v1/status``): version, author, events, topics,
        logs, ingest queue, disk and memory, peers, docs, clock, fleet…"""
        return self._request("GET", "/v1/status")

    def topics(self) -> Dict[str, Any]:
        """``{"topics": [...]}``: each topic with its event count, bytes and logs
        (author, base, head_seq, head_id, head_time)."""
        return self._request("GET", "/v1/topics")

    def fleet_nodes(self) -> Dict[str, Any]:
        """The fleet view (``GET /v1/fleet/nodes``): every node whose heartbeat this
        node holds, problems first, with ``now_ms`` and ``interval_ms``."""
        return self._request("GET", "/v1/fleet/nodes")

    # --- documents ---

    def doc_get(self, topic: str, doc: str, path: Optional[str] = None) -> Any:
        """The value of document ``doc`` in ``topic`` (JSON), whole or at ``path``
        (segments separated by ``/``: map keys and list positions, ``sensors/t1``,
        ``order/0``). :class:`MurmurError` ``no_such_document`` / ``no_such_path``
        (404) when absent."""
        return self._request("GET", "/v1/doc" + _query(
            {"topic": topic, "doc": doc, "path": path}))["value"]

    def doc_change(self, topic: str, doc: str, ops: Sequence[Dict[str, Any]],
                   message: Optional[str] = None) -> Dict[str, Any]:
        """Applies ``ops`` to a document as one atomic change (creating the document if
        needed) and returns it once durable: ``{topic, doc, seq, offset, id, hash}``.

        Ops: ``{"op": "set", "path", "value"}``, ``{"op": "delete", "path"}``,
        ``{"op": "counter", "path", "value"}``, ``{"op": "increment", "path", "by"}``,
        ``{"op": "text", "path", "value"}``, ``{"op": "insert", "path", "index",
        "value"}``, ``{"op": "remove", "path", "index", "count"}``, ``{"op": "splice",
        "path", "index", "delete", "insert"}``. ``message`` (≤ 1,024 bytes) is kept
        with the change.
        """
        req: Dict[str, Any] = {"topic": topic, "doc": doc, "ops": list(ops)}
        if message is not None:
            req["message"] = message
        return self._request("POST", "/v1/doc", req)

    def doc_set(self, topic: str, doc: str, path: str, value: Any,
                message: Optional[str] = None) -> Dict[str, Any]:
        """Sets ``path`` of a document to a JSON ``value`` (see :meth:`doc_change`)."""
        return self.doc_change(topic, doc, [{"op": "set", "path": path, "value": value}],
                               message)

    def docs(self, topic: str) -> List[str]:
        """The ids of the documents in ``topic``."""
        return self._request("GET", "/v1/docs" + _query({"topic": topic}))["docs"]


class Follow:
    """A live follow stream (see :meth:`Client.follow`): an iterator of
    :class:`Event` over one open connection.

    ``next_offset`` is the offset after the last event yielded (``None`` before the
    first one when following from "now" or as a named consumer): pass it as
    ``from_offset`` to resume. ``close()`` may be called from another thread to stop a
    blocked iteration, which then ends.
    """

    def __init__(self, conn: _UnixHTTPConnection, resp: http.client.HTTPResponse,
                 idle_timeout: Optional[float], from_offset: Optional[int]) -> None:
        self._conn = conn
        self._resp = resp
        self._sock = conn.sock
        self._lines: "deque[bytes]" = deque()  # complete lines not yet yielded
        self._partial = b""  # the start of a line still arriving
        self._closed = False
        self.idle_timeout = idle_timeout
        self.next_offset = from_offset
        if self._sock is not None:
            self._sock.settimeout(idle_timeout)

    def __iter__(self) -> Iterator[Event]:
        return self

    def __next__(self) -> Event:
        while True:
            while self._lines:
                line = self._lines.popleft()
                if not line.strip():
                    continue
                ev = Event.from_json(json.loads(line))
                if ev.offset is not None:
                    self.next_offset = ev.offset + 1
                return ev
            if self._closed:
                raise StopIteration
            try:
                chunk = self._resp.read1(65536)
            except socket.timeout:
                self.close()
                raise TimeoutError(
                    f"no event on the follow stream within {self.idle_timeout}s") from None
            except (OSError, ValueError, AttributeError, http.client.HTTPException):
                # The daemon went away without ending the stream, or close() ran in
                # another thread: the stream is over (resume from next_offset).
                chunk = b""
            if not chunk:
                # End of the stream; a partial last line is an event cut off, dropped.
                self.close()
                raise StopIteration
            parts = (self._partial + chunk).split(b"\n")
            self._partial = parts.pop()
            self._lines.extend(parts)

    def close(self) -> None:
        """Closes the connection; iteration ends. Safe to call twice, and from another
        thread than the one iterating."""
        if self._closed:
            return
        self._closed = True
        self._lines.clear()
        self._partial = b""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes a read blocked in another thread
            except OSError:
                pass
        self._resp.close()
        self._conn.close()

    @property
    def closed(self) -> bool:
        """Whether the stream is closed."""
        return self._closed

    def __enter__(self) -> "Follow":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

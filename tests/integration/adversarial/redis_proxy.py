"""A TCP proxy in front of redis-server that can refuse chosen commands by cutting the connection
that sends them: Redis failing at one precise step of a request (sending its task, say) while
everything before it worked."""

from __future__ import annotations

import socket
import threading


class FaultyRedisProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.refused: frozenset[str] = frozenset()  # command names: a connection sending one is cut
        self.cut = 0  # connections cut so far
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # Redis is down: so is the proxy's side of it
                client.close()
                continue
            with self._lock:
                self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _refuses(self, data: bytes) -> bool:
        upper = data.upper()  # a command name travels as a RESP bulk string: $5\r\nLPUSH\r\n
        return any(f"${len(name)}\r\n{name}\r\n".encode() in upper for name in self.refused)

    def _pump(self, source: socket.socket, target: socket.socket, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._refuses(data):
                    self.cut += 1
                    break
                target.sendall(data)
        except OSError:
            pass
        for sock in (source, target):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass

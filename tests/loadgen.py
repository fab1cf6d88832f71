"""A small HTTP/1.1 keep-alive load client for the reliability tests: exact request counts, every response parsed."""
import asyncio, json, re, time


def post_raw(sock, path: bytes, body: bytes, ctype: bytes = b'application/json') -> tuple[int, bytes]:
    "One POST over an open keep-alive socket, with as little client work as possible: (status, body)."
    sock.sendall(b'POST ' + path + b' HTTP/1.1\r\nHost: x\r\nContent-Type: ' + ctype + b'\r\nContent-Length: '
                 + str(len(body)).encode() + b'\r\n\r\n' + body)
    buf = b''
    while b'\r\n\r\n' not in buf:
        chunk = sock.recv(65536)
        if not chunk: raise ConnectionError('closed')
        buf += chunk
    head, _, rest = buf.partition(b'\r\n\r\n')
    n = int(re.search(rb'content-length: *(\d+)', head, re.I).group(1))
    while len(rest) < n:
        chunk = sock.recv(1 << 20)
        if not chunk: raise ConnectionError('closed')
        rest += chunk
    return int(head.split()[1]), rest


async def _conn(host, port, path, bodies, results, stop_at, headers=b''):
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for body in bodies:
            if stop_at and time.monotonic() > stop_at: return
            t0 = time.perf_counter()
            req = (f'POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n'
                   f'Content-Length: {len(body)}\r\n').encode() + headers + b'\r\n' + body
            try:
                writer.write(req); await writer.drain()
                status_line = await reader.readline()
                if not status_line: raise ConnectionError('closed')
                status = int(status_line.split()[1]); length = 0
                while True:
                    line = await reader.readline()
                    if line in (b'\r\n', b''): break
                    k, _, v = line.partition(b':')
                    if k.strip().lower() == b'content-length': length = int(v.strip())
                payload = await reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError, OSError) as e:
                results.append(('error', type(e).__name__, time.perf_counter() - t0)); return
            results.append((status, payload, time.perf_counter() - t0))
    finally:
        writer.close()


def hammer(url, bodies, connections=32, path='/predict', max_seconds=None):
    """POST every body in `bodies` (bytes) over `connections` keep-alive connections; returns [(status, payload, seconds)].
    A connection that fails stops (its remaining bodies are not sent)."""
    host, port = url.split('//')[1].split(':'); port = int(port)
    per = [bodies[i::connections] for i in range(connections)]
    results = []
    stop_at = time.monotonic() + max_seconds if max_seconds else None
    async def main():
        await asyncio.gather(*[_conn(host, port, path, b, results, stop_at) for b in per if b])
    asyncio.run(main())
    return results


def ids_of(results):
    "Request ids of the rows in 200 responses."
    out = []
    for status, payload, _ in results:
        if status == 200: out += [p['request_id'] for p in json.loads(payload)['predictions']]
    return out

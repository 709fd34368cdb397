"""Finding a merchant's sessions of an orderReference in the Redis store, newest first.

The commit script indexes every session it first writes in a sorted set per merchant and
orderReference (:meth:`gateway.store.keys.RedisKeys.order_sessions`): members the session ids,
scores ``createdAt`` in epoch microseconds (exact in a double until the year 2255). Redis orders
equal scores by member, byte by byte, which for UTF-8 is the order of Python's ``str``; read in
reverse that is the contract's order: ``createdAt``, then ``sessionId``, both descending.

A create that died between writing its session and indexing it (its merchant never got the
201, so searching by orderReference is how they find it) left the session out of the index,
but the order's reservation, in the index's slot, still names it: the first page of a search
asks one script whether the reservation names a session missing from the index, and indexes it
(one more round trip per search; two more in the rare case it does).

A page costs two round trips: the index (the ties of the cursor's instant and the ids after it,
two reads of the one index key in one pipeline), then the sessions (a pipeline of ``GET``: the
sessions lie in several slots, so no ``MGET``; a cluster client sends each node its share).
Both are idempotent reads (:meth:`~gateway.store.redis_conn.RedisConn.read`). Ids whose session
has expired are skipped, removed from the index, and the page is filled from further on. The
commit writes a session before its index entry, so an entry always names a session that was
written.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.domain.session import SessionRecord
from gateway.store.base import SessionCursor, stored_session
from gateway.store.keys import RedisKeys
from gateway.store.redis_conn import LuaScript, RedisConn, ScriptArg
from gateway.store.redis_support import _mapped, _text

__all__ = ["RedisFind", "created_score", "read_session"]

# KEYS reservation, the index (one slot). The session id the reservation names (bound, or in a
# create's claim 'claim:<token>|<session id>|<lease end>') when the index lacks it, else ''.
_UNINDEXED = LuaScript(
    """
local v = redis.call('GET', KEYS[1])
if not v then return '' end
local sid = v
if string.sub(v, 1, 6) == 'claim:' then
  sid = string.match(v, '^claim:[^|]*|([^|]*)|%d+$') or ''
end
if sid == '' or redis.call('ZSCORE', KEYS[2], sid) then return '' end
return sid
"""
)

# KEYS the index; ARGV session id, createdAt (epoch µs), ttl_ms: index it, outliving it.
_INDEX = LuaScript(
    """
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def created_score(created_at: datetime) -> int:
    """The index score of a session created at ``created_at``: epoch microseconds."""
    return (created_at - _EPOCH) // _MICROSECOND


async def read_session(conn: RedisConn, keys: RedisKeys, session_id: str) -> SessionRecord | None:
    """The stored session (an idempotent read), or None when unknown or expired."""
    key = keys.session(session_id)

    async def read() -> Any:
        return await conn.client.get(key)

    with _mapped("get_session"):
        payload = await conn.read(read)
    return None if payload is None else stored_session(payload, repr(session_id))


class RedisFind:
    """Mixed into :class:`~gateway.store.redis.RedisStore` (which sets ``keys`` and ``conn``)."""

    keys: RedisKeys
    conn: RedisConn

    async def find_sessions(
        self,
        merchant_id: str,
        order_reference: str,
        *,
        limit: int,
        before: SessionCursor | None = None,
    ) -> list[SessionRecord]:
        """The merchant's sessions of ``order_reference``, newest first, after ``before``."""
        index = self.keys.order_sessions(merchant_id, order_reference)
        after = (created_score(before.created_at), before.session_id) if before else None
        if before is None:
            await self._index_reserved(merchant_id, order_reference, index)
        found: list[SessionRecord] = []
        while len(found) < limit:
            wanted = limit - len(found)
            ids = await self._index_page(index, after, wanted)
            if not ids:
                break
            with _mapped("find_sessions"):
                payloads = await self._sessions([i for _, i in ids])
            gone = [i for (_, i), payload in zip(ids, payloads, strict=True) if payload is None]
            found += [stored_session(p, "of an order") for p in payloads if p is not None]
            if gone:
                with _mapped("find_sessions"):
                    await self.conn.client.zrem(index, *gone)
            if len(ids) < wanted:
                break
            after = ids[-1]
        return found

    async def _index_reserved(self, merchant_id: str, order_reference: str, index: str) -> None:
        """Index the session the order's reservation names if the index lacks it (see the
        module docstring)."""
        reservation = self.keys.order(merchant_id, order_reference)
        with _mapped("find_sessions"):
            missing = _text(await self.conn.script(_UNINDEXED, [reservation, index], []))
        if not missing:
            return
        record = await read_session(self.conn, self.keys, missing)
        if record is None or (record.merchantId, record.orderReference) != (
            merchant_id,
            order_reference,
        ):
            return
        with _mapped("find_sessions"):
            ttl_ms = int(await self.conn.client.pttl(self.keys.session(missing)))
            if ttl_ms > 0:
                args: list[ScriptArg] = [missing, created_score(record.createdAt), ttl_ms]
                await self.conn.script(_INDEX, [index], args)

    async def _sessions(self, session_ids: list[str]) -> list[Any]:
        """The stored payloads of ``session_ids`` (None where gone), in order."""

        async def read() -> list[Any]:
            async with self.conn.client.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    pipe.get(self.keys.session(session_id))
                result: list[Any] = await pipe.execute()
                return result

        return await self.conn.read(read)

    async def _index_page(
        self, index: str, after: tuple[int, str] | None, wanted: int
    ) -> list[tuple[int, str]]:
        """Up to ``wanted`` (score, id) entries of ``index`` after ``after``, newest first."""
        client = self.conn.client
        with _mapped("find_sessions"):
            if after is None:

                async def first() -> Any:
                    return await client.zrevrangebyscore(
                        index, "+inf", "-inf", start=0, num=wanted, withscores=True
                    )

                rows = await self.conn.read(first)
                return [(int(score), _text(member)) for member, score in _pairs(rows)]
            score, session_id = after

            async def further() -> list[Any]:
                async with client.pipeline(transaction=False) as pipe:
                    pipe.zrevrangebyscore(index, score, score)
                    pipe.zrevrangebyscore(
                        index, f"({score}", "-inf", start=0, num=wanted, withscores=True
                    )
                    result: list[Any] = await pipe.execute()
                    return result

            ties, older = await self.conn.read(further)
        cut = session_id.encode()
        page = [(score, _text(member)) for member in ties if bytes(member) < cut][:wanted]
        page += [(int(s), _text(member)) for member, s in _pairs(older)]
        return page[:wanted]


def _pairs(rows: Any) -> list[tuple[bytes, float]]:
    """A ``WITHSCORES`` reply as (member, score) pairs."""
    return [(bytes(member), float(score)) for member, score in rows]

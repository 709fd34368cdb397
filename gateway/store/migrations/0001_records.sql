-- The records of the gateway in PostgreSQL (gateway.store.postgres), applied by
-- `gateway db upgrade` in one transaction. Times a record is kept for (keep_until) and leases
-- are on the database clock; the due times of the work queues are epoch seconds from the
-- gateway (as the store protocol passes them). A row past its keep_until reads as absent, and
-- gateway_purge() deletes it later, in bounded batches, through the keep_until indexes.

-- Checkout sessions: the SessionRecord JSON plus the columns the API looks sessions up by.
-- The primary key serves GET /sessions/{id}; session ids are unique across merchants (they are
-- derived from merchant and Idempotency-Key), the API checks the merchant on the row it reads.
-- Identifiers compare byte-wise (COLLATE "C"), as in the other stores, whatever the locale.
CREATE TABLE sessions (
    session_id      text COLLATE "C" PRIMARY KEY,
    merchant_id     text COLLATE "C" NOT NULL,
    order_reference text COLLATE "C" NOT NULL,
    created_at      timestamptz NOT NULL,
    version         integer NOT NULL,
    payload         text NOT NULL,
    keep_until      timestamptz NOT NULL
);
CREATE INDEX sessions_by_order
    ON sessions (merchant_id, order_reference, created_at DESC, session_id DESC);
CREATE INDEX sessions_by_keep_until ON sessions (keep_until);

-- Idempotency keys: leased while a create runs (token, lease_until), then the stored answer.
-- A pinned key (pin, sent) outlives its holder's lease, so a retry resumes with the same pin.
CREATE TABLE idempotency_keys (
    scope       text COLLATE "C" NOT NULL,
    idem_key    text COLLATE "C" NOT NULL,
    fingerprint text NOT NULL,
    token       text,
    lease_until timestamptz,
    pin         text,
    sent        text NOT NULL DEFAULT '',
    status      integer,
    body        bytea,
    location    text,
    keep_until  timestamptz NOT NULL,
    PRIMARY KEY (scope, idem_key)
);
CREATE INDEX idempotency_keys_by_keep_until ON idempotency_keys (keep_until);

-- One unexpired PENDING session per merchant and orderReference: held by a claim
-- ('claim:<token>', for the lease) and then by the session id (for the session's retention).
CREATE TABLE order_reservations (
    scope      text COLLATE "C" NOT NULL,
    order_ref  text COLLATE "C" NOT NULL,
    holder     text NOT NULL,
    keep_until timestamptz NOT NULL,
    PRIMARY KEY (scope, order_ref)
);
CREATE INDEX order_reservations_by_keep_until ON order_reservations (keep_until);

-- Provider webhook events: 'processing' while leased, then 'done' for the de-duplication TTL.
CREATE TABLE webhook_events (
    provider   text COLLATE "C" NOT NULL,
    event_id   text COLLATE "C" NOT NULL,
    state      text NOT NULL,
    keep_until timestamptz NOT NULL,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX webhook_events_by_keep_until ON webhook_events (keep_until);

-- The expiry schedule: a session id is due at `due` (epoch seconds), or when its lease ends.
CREATE TABLE session_expiries (
    session_id text COLLATE "C" PRIMARY KEY,
    due        double precision NOT NULL
);
CREATE INDEX session_expiries_by_due ON session_expiries (due);

-- The notification outbox: due items are leased to one worker at a time.
CREATE TABLE outbox (
    id          text COLLATE "C" PRIMARY KEY,
    merchant_id text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    created_at  double precision NOT NULL,
    attempts    integer NOT NULL DEFAULT 0,
    last_error  text,
    due         double precision NOT NULL,
    lease       text
);
CREATE INDEX outbox_by_due ON outbox (due);

CREATE TABLE outbox_dead (
    id          text COLLATE "C" PRIMARY KEY,
    merchant_id text NOT NULL,
    event_type  text NOT NULL,
    body        bytea NOT NULL,
    created_at  double precision NOT NULL,
    attempts    integer NOT NULL,
    last_error  text,
    died_at     double precision NOT NULL
);
CREATE INDEX outbox_dead_by_died_at ON outbox_dead (died_at);

-- Orphan provider sessions to make unpayable, leased like the outbox.
CREATE TABLE orphan_jobs (
    id         text COLLATE "C" PRIMARY KEY,
    session_id text NOT NULL,
    provider   text NOT NULL,
    request    bytea NOT NULL,
    attempts   integer NOT NULL DEFAULT 0,
    due        double precision NOT NULL,
    lease      text
);
CREATE INDEX orphan_jobs_by_due ON orphan_jobs (due);

CREATE FUNCTION gateway_ms(p_ms bigint) RETURNS interval
LANGUAGE sql IMMUTABLE AS $$ SELECT make_interval(secs => p_ms / 1000.0) $$;

-- The first round trip of a create: claim the key (or resume a given-up pinned one) and
-- reserve the order. Locks are taken in the order key, then order reservation, everywhere.
CREATE FUNCTION gateway_begin_create(
    p_scope text, p_key text, p_fingerprint text, p_token text, p_lease_ms bigint,
    p_order_ref text, p_pin text, p_pin_ttl_ms bigint,
    OUT o_kind text, OUT o_status integer, OUT o_body bytea, OUT o_location text,
    OUT o_retry_ms bigint, OUT o_holder text, OUT o_pin text, OUT o_sent text,
    OUT o_resumed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_lease_until timestamptz := v_now + gateway_ms(p_lease_ms);
    v_keep timestamptz := v_now + gateway_ms(
        CASE WHEN p_pin IS NULL THEN p_lease_ms ELSE greatest(p_lease_ms, p_pin_ttl_ms) END);
    rec idempotency_keys%ROWTYPE;
BEGIN
    o_pin := p_pin;
    o_sent := '';
    o_resumed := false;
    LOOP
        SELECT * INTO rec FROM idempotency_keys
        WHERE scope = p_scope AND idem_key = p_key FOR UPDATE;
        IF NOT FOUND THEN
            INSERT INTO idempotency_keys
                (scope, idem_key, fingerprint, token, lease_until, pin, keep_until)
            VALUES (p_scope, p_key, p_fingerprint, p_token, v_lease_until, p_pin, v_keep)
            ON CONFLICT DO NOTHING;
            EXIT WHEN FOUND;
            CONTINUE;  -- a concurrent caller inserted it first: read theirs
        END IF;
        IF rec.keep_until <= v_now THEN  -- past its retention: absent
            UPDATE idempotency_keys
            SET fingerprint = p_fingerprint, token = p_token, lease_until = v_lease_until,
                pin = p_pin, sent = '', status = NULL, body = NULL, location = NULL,
                keep_until = v_keep
            WHERE scope = p_scope AND idem_key = p_key;
            EXIT;
        END IF;
        IF rec.fingerprint <> p_fingerprint THEN
            o_kind := 'mismatch';
            RETURN;
        END IF;
        IF rec.status IS NOT NULL THEN
            o_kind := 'replay';
            o_status := rec.status;
            o_body := rec.body;
            o_location := rec.location;
            RETURN;
        END IF;
        IF rec.token IS NOT NULL AND rec.lease_until > v_now THEN
            o_kind := 'in_flight';
            o_retry_ms := greatest(1, ceil(extract(epoch FROM rec.lease_until - v_now) * 1000));
            RETURN;
        END IF;
        -- given up, or its holder's lease ran out: claimed again, with the stored pin
        IF rec.pin IS NOT NULL THEN
            o_pin := rec.pin;
            o_resumed := true;
        END IF;
        o_sent := rec.sent;
        UPDATE idempotency_keys
        SET token = p_token, lease_until = v_lease_until, pin = o_pin,
            keep_until = CASE WHEN o_pin IS NULL THEN v_lease_until
                              ELSE greatest(rec.keep_until, v_lease_until) END
        WHERE scope = p_scope AND idem_key = p_key;
        EXIT;
    END LOOP;
    o_kind := 'claimed';
    IF p_order_ref IS NOT NULL THEN
        LOOP
            INSERT INTO order_reservations AS o (scope, order_ref, holder, keep_until)
            VALUES (p_scope, p_order_ref, 'claim:' || p_token, v_lease_until)
            ON CONFLICT (scope, order_ref) DO UPDATE
                SET holder = excluded.holder, keep_until = excluded.keep_until
                WHERE o.keep_until <= v_now;
            EXIT WHEN FOUND;
            SELECT holder INTO o_holder FROM order_reservations
            WHERE scope = p_scope AND order_ref = p_order_ref AND keep_until > v_now;
            EXIT WHEN FOUND;  -- else it was dropped meanwhile: try again
        END LOOP;
    END IF;
END
$$;

-- Give up a claim after provider calls with an unknown outcome: the lease is dropped, the
-- pin stays and learns the providers in p_sent (comma-separated); without a pin, a release.
CREATE FUNCTION gateway_abandon_create(p_scope text, p_key text, p_token text, p_sent text)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    rec idempotency_keys%ROWTYPE;
    v_sent text;
    v_provider text;
BEGIN
    SELECT * INTO rec FROM idempotency_keys
    WHERE scope = p_scope AND idem_key = p_key AND keep_until > clock_timestamp()
    FOR UPDATE;
    IF NOT FOUND OR rec.token IS DISTINCT FROM p_token THEN
        RETURN;
    END IF;
    IF rec.pin IS NULL THEN
        DELETE FROM idempotency_keys WHERE scope = p_scope AND idem_key = p_key;
        RETURN;
    END IF;
    v_sent := rec.sent;
    FOREACH v_provider IN ARRAY string_to_array(p_sent, ',') LOOP
        CONTINUE WHEN v_provider = '' OR v_provider = ANY (string_to_array(v_sent, ','));
        v_sent := CASE WHEN v_sent = '' THEN v_provider ELSE v_sent || ',' || v_provider END;
    END LOOP;
    UPDATE idempotency_keys SET token = NULL, lease_until = NULL, sent = v_sent
    WHERE scope = p_scope AND idem_key = p_key;
END
$$;

-- The second round trip of a create, one transaction: unless the session is stored already
-- (never overwritten), write it with its expiry, notifications and orphan jobs; point the
-- order reservation held by the token at it; store the answer if the token holds the key.
CREATE FUNCTION gateway_commit_create(
    p_session_id text, p_merchant_id text, p_order_reference text, p_created_at timestamptz,
    p_version integer, p_payload text, p_ttl_ms bigint, p_expires_at double precision,
    p_scope text, p_key text, p_token text, p_status integer, p_body bytea, p_location text,
    p_key_ttl_ms bigint, p_order_ref text, p_order_ttl_ms bigint, p_due double precision,
    p_outbox_ids text[], p_outbox_merchants text[], p_outbox_types text[],
    p_outbox_bodies bytea[], p_outbox_created double precision[],
    p_orphan_ids text[], p_orphan_sessions text[], p_orphan_providers text[],
    p_orphan_requests bytea[])
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_holds boolean;
BEGIN
    SELECT token = p_token INTO v_holds FROM idempotency_keys
    WHERE scope = p_scope AND idem_key = p_key AND keep_until > v_now
    FOR UPDATE;
    INSERT INTO sessions AS s
        (session_id, merchant_id, order_reference, created_at, version, payload, keep_until)
    VALUES (p_session_id, p_merchant_id, p_order_reference, p_created_at, p_version,
            p_payload, v_now + gateway_ms(p_ttl_ms))
    ON CONFLICT (session_id) DO UPDATE
        SET merchant_id = excluded.merchant_id, order_reference = excluded.order_reference,
            created_at = excluded.created_at, version = excluded.version,
            payload = excluded.payload, keep_until = excluded.keep_until
        WHERE s.keep_until <= v_now;
    IF FOUND THEN
        IF p_expires_at IS NOT NULL THEN
            INSERT INTO session_expiries (session_id, due) VALUES (p_session_id, p_expires_at)
            ON CONFLICT (session_id) DO UPDATE SET due = excluded.due;
        END IF;
        INSERT INTO outbox (id, merchant_id, event_type, body, created_at, due)
        SELECT u.id, u.merchant_id, u.event_type, u.body, u.created_at, p_due
        FROM unnest(p_outbox_ids, p_outbox_merchants, p_outbox_types, p_outbox_bodies,
                    p_outbox_created) AS u(id, merchant_id, event_type, body, created_at)
        ON CONFLICT (id) DO UPDATE
            SET merchant_id = excluded.merchant_id, event_type = excluded.event_type,
                body = excluded.body, created_at = excluded.created_at, attempts = 0,
                last_error = NULL, due = excluded.due;
        INSERT INTO orphan_jobs (id, session_id, provider, request, due)
        SELECT u.id, u.session_id, u.provider, u.request, p_due
        FROM unnest(p_orphan_ids, p_orphan_sessions, p_orphan_providers, p_orphan_requests)
            AS u(id, session_id, provider, request)
        ON CONFLICT (id) DO UPDATE
            SET session_id = excluded.session_id, provider = excluded.provider,
                request = excluded.request, attempts = 0, due = excluded.due;
    END IF;
    IF p_order_ref IS NOT NULL THEN
        UPDATE order_reservations
        SET holder = p_session_id, keep_until = v_now + gateway_ms(p_order_ttl_ms)
        WHERE scope = p_scope AND order_ref = p_order_ref AND holder = 'claim:' || p_token
          AND keep_until > v_now;
    END IF;
    IF NOT coalesce(v_holds, false) THEN
        RETURN false;
    END IF;
    UPDATE idempotency_keys
    SET token = NULL, lease_until = NULL, status = p_status, body = p_body,
        location = p_location, keep_until = v_now + gateway_ms(p_key_ttl_ms)
    WHERE scope = p_scope AND idem_key = p_key;
    RETURN true;
END
$$;

-- A webhook event: its live marker's state, or 'new' once leased to this caller.
CREATE FUNCTION gateway_claim_event(p_provider text, p_event_id text, p_lease_ms bigint)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := clock_timestamp();
    v_state text;
BEGIN
    LOOP
        INSERT INTO webhook_events AS e (provider, event_id, state, keep_until)
        VALUES (p_provider, p_event_id, 'processing', v_now + gateway_ms(p_lease_ms))
        ON CONFLICT (provider, event_id) DO UPDATE
            SET state = excluded.state, keep_until = excluded.keep_until
            WHERE e.keep_until <= v_now;
        IF FOUND THEN
            RETURN 'new';
        END IF;
        SELECT state INTO v_state FROM webhook_events
        WHERE provider = p_provider AND event_id = p_event_id AND keep_until > v_now;
        IF FOUND THEN
            RETURN v_state;
        END IF;
    END LOOP;
END
$$;

-- Move a leased outbox item to the dead letters, keeping the newest p_keep.
CREATE FUNCTION gateway_outbox_dead(
    p_id text, p_lease text, p_attempts integer, p_error text, p_at double precision,
    p_keep integer)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    item outbox%ROWTYPE;
BEGIN
    DELETE FROM outbox WHERE id = p_id AND lease = p_lease RETURNING * INTO item;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    INSERT INTO outbox_dead
        (id, merchant_id, event_type, body, created_at, attempts, last_error, died_at)
    VALUES (item.id, item.merchant_id, item.event_type, item.body, item.created_at,
            p_attempts, p_error, p_at)
    ON CONFLICT (id) DO UPDATE
        SET attempts = excluded.attempts, last_error = excluded.last_error,
            died_at = excluded.died_at;
    DELETE FROM outbox_dead WHERE id IN (
        SELECT id FROM outbox_dead ORDER BY died_at DESC, id DESC OFFSET p_keep);
    RETURN true;
END
$$;

-- Delete at most p_limit rows whose retention ended before p_now (epoch seconds), oldest
-- first: each batch is found through a keep_until index, locked (rows another purger holds
-- are skipped) and deleted by ctid, so no statement scans a table.
CREATE FUNCTION gateway_purge(p_now double precision, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_cut timestamptz := to_timestamp(p_now);
    v_left integer := p_limit;
    v_count integer;
BEGIN
    DELETE FROM sessions WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM sessions WHERE keep_until < v_cut
        ORDER BY keep_until LIMIT v_left FOR UPDATE SKIP LOCKED));
    GET DIAGNOSTICS v_count = ROW_COUNT;
    v_left := v_left - v_count;
    IF v_left > 0 THEN
        DELETE FROM idempotency_keys WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM idempotency_keys WHERE keep_until < v_cut
            ORDER BY keep_until LIMIT v_left FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_left := v_left - v_count;
    END IF;
    IF v_left > 0 THEN
        DELETE FROM order_reservations WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM order_reservations WHERE keep_until < v_cut
            ORDER BY keep_until LIMIT v_left FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_left := v_left - v_count;
    END IF;
    IF v_left > 0 THEN
        DELETE FROM webhook_events WHERE ctid = ANY (ARRAY(
            SELECT ctid FROM webhook_events WHERE keep_until < v_cut
            ORDER BY keep_until LIMIT v_left FOR UPDATE SKIP LOCKED));
        GET DIAGNOSTICS v_count = ROW_COUNT;
        v_left := v_left - v_count;
    END IF;
    RETURN p_limit - v_left;
END
$$;

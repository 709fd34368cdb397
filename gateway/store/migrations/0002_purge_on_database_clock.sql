-- Retention on the database's clock: gateway_purge() of 0001 cut at the caller's clock, so a
-- gateway whose clock ran ahead of the database's deleted records every read still treated
-- as live.

-- Delete at most p_limit rows whose retention ended before p_now (epoch seconds, the caller's
-- clock) and before the database's clock, oldest first: every read decides on the database's
-- clock whether a row is live, so a caller whose clock runs ahead never deletes what reads
-- still see (an in-flight claim, the order it reserves, a webhook event being processed).
-- Each batch is found through a keep_until index, locked (rows another purger holds
-- are skipped) and deleted by ctid, so no statement scans a table.
CREATE OR REPLACE FUNCTION gateway_purge(p_now double precision, p_limit integer)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    v_cut timestamptz := least(to_timestamp(p_now), clock_timestamp());
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

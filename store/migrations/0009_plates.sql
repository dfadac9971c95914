-- FleetWatch schema 9: plates in their one canonical form (geo.plates.normalise_plate): Unicode
-- NFKC (full-width letters and digits become ASCII), control characters, whitespace and
-- separators (middle dots, hyphens and dashes, full stops, underscores, slashes) removed, then
-- upper-case. Before this, 浙Ｃ33333, 京A 12345 and 京A·12346 were stored as typed or sent and
-- became vehicles of their own. A row whose canonical plate is already another row's (same
-- colour) is left as it is: two vehicle rows for one plate need an operator to decide which
-- one keeps the history, not a migration. NFKC needs a UTF-8 database (the embedded one is).

CREATE FUNCTION pg_temp.canonical_plate(plate text) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT nullif(upper(regexp_replace(
        CASE WHEN current_setting('server_encoding') = 'UTF8' THEN normalize(plate, NFKC)
             ELSE plate END,
        '[-[:space:][:cntrl:]·・•‧･‐-―−._/\\]+', '', 'g'
    )), '')
$$;

UPDATE vehicles v SET plate = pg_temp.canonical_plate(v.plate), updated_at = now()
WHERE v.plate IS NOT NULL
  AND v.plate IS DISTINCT FROM pg_temp.canonical_plate(v.plate)
  AND NOT EXISTS (
      SELECT 1 FROM vehicles o
      WHERE o.id <> v.id AND o.plate_color = v.plate_color
        AND pg_temp.canonical_plate(o.plate) = pg_temp.canonical_plate(v.plate)
  );

UPDATE watchlist w SET plate = pg_temp.canonical_plate(w.plate)
WHERE w.plate IS DISTINCT FROM pg_temp.canonical_plate(w.plate)
  AND pg_temp.canonical_plate(w.plate) IS NOT NULL
  AND NOT EXISTS (
      SELECT 1 FROM watchlist o
      WHERE o.plate <> w.plate AND pg_temp.canonical_plate(o.plate) = pg_temp.canonical_plate(w.plate)
  );

DROP FUNCTION pg_temp.canonical_plate(text);

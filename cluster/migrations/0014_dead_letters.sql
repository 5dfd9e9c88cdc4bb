-- Events a consumer gave up on (issue 11): one row per message it published to its
-- dead-letter topic (undecodable, an unknown version, or refused max_attempts times),
-- written right after that publish. The message itself is on the DLQ topic; this row
-- is what /metrics counts (agora_events_dead_lettered{consumer}) and what an operator
-- reads first. Best effort: a crash between the publish and this insert loses the row,
-- never the message.
CREATE TABLE dead_letters (
    id          bigserial PRIMARY KEY,
    consumer    text NOT NULL,
    topic       text NOT NULL,
    event_id    text,
    event_type  text,
    reason      text NOT NULL,
    at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_consumer ON dead_letters (consumer, at);

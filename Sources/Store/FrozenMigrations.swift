// The SQL of migrations v2, v3 and v5, frozen as literals: they used to execute the writers' own `schema`
// constants, so that editing a writer would silently have edited a shipped migration. Never edit these:
// a change to a table is a new migration (AppDatabase.migrator).

package enum FrozenMigrations {
    /// Migration "v2: zoom events, visit timelines and counters", as shipped.
    package static let zoomV2 = """
        CREATE TABLE zoom_events (
            seq                   INTEGER PRIMARY KEY,
            meeting_id            TEXT NOT NULL,
            visit_uuid            TEXT,
            event_name            TEXT NOT NULL,
            event_ts              INTEGER NOT NULL,
            participant_id        TEXT,
            participant_name      TEXT,
            join_time             TEXT,
            leave_time            TEXT,
            start_time            TEXT,
            end_time              TEXT,
            latency_ms            REAL,
            interpreter_requested INTEGER NOT NULL CHECK (interpreter_requested IN (0, 1)),
            account_id            TEXT,
            raw_json              TEXT NOT NULL,
            file_id               TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record                INTEGER NOT NULL
        ) STRICT;
        -- UNIQUE treats NULLs as distinct: key on ifnull(…, '') so meeting-level events dedupe too.
        CREATE UNIQUE INDEX zoom_events_key
            ON zoom_events (meeting_id, ifnull(visit_uuid, ''), event_name, event_ts, ifnull(participant_id, ''));
        CREATE INDEX zoom_events_by_visit ON zoom_events (visit_uuid);
        CREATE INDEX zoom_events_by_file ON zoom_events (file_id);

        CREATE TABLE zoom_visits (
            visit_uuid            TEXT PRIMARY KEY NOT NULL,
            meeting_id            TEXT NOT NULL,
            started_at            TEXT,
            ended_at              TEXT,
            duration_seconds      INTEGER,
            max_latency_ms        REAL,
            interpreter_requested INTEGER NOT NULL,
            participants          INTEGER NOT NULL,
            events                INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX zoom_visits_by_meeting ON zoom_visits (meeting_id);

        CREATE TABLE zoom_visit_intervals (
            visit_uuid       TEXT NOT NULL REFERENCES zoom_visits (visit_uuid) ON DELETE CASCADE,
            participant_id   TEXT NOT NULL,
            participant_name TEXT,
            joined_at        TEXT,
            left_at          TEXT
        ) STRICT;
        CREATE INDEX zoom_visit_intervals_by_visit ON zoom_visit_intervals (visit_uuid);

        CREATE TABLE zoom_counters (
            event_name TEXT PRIMARY KEY NOT NULL,
            received   INTEGER NOT NULL,
            inserted   INTEGER NOT NULL
        ) STRICT;
        """

    /// Migration "v3: intake patients, persons with history, visits", as shipped.
    package static let intakeV3 = """
        CREATE TABLE patients (
            id         INTEGER PRIMARY KEY,
            mrn        TEXT NOT NULL UNIQUE,
            file_id    TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED
        ) STRICT;
        CREATE INDEX patients_by_file ON patients (file_id);

        CREATE TABLE persons (
            patient_id  INTEGER PRIMARY KEY REFERENCES patients (id),
            first_name  TEXT NOT NULL,
            last_name   TEXT NOT NULL,
            birth_date  TEXT NOT NULL,
            file_id     TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED
        ) STRICT;
        CREATE INDEX persons_by_file ON persons (file_id);

        CREATE TABLE person_history (
            seq        INTEGER PRIMARY KEY,
            patient_id INTEGER NOT NULL REFERENCES patients (id),
            field      TEXT NOT NULL CHECK (field IN ('first_name', 'last_name', 'birth_date')),
            old_value  TEXT NOT NULL,
            new_value  TEXT NOT NULL,
            file_id    TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record     INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX person_history_by_patient ON person_history (patient_id);
        CREATE INDEX person_history_by_file ON person_history (file_id);

        CREATE TABLE visits (
            id                   INTEGER PRIMARY KEY,
            visit_account_number TEXT NOT NULL UNIQUE,
            patient_id           INTEGER NOT NULL REFERENCES patients (id),
            visit_date           TEXT NOT NULL,
            reason               TEXT,
            file_id              TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record               INTEGER NOT NULL
        ) STRICT;
        CREATE INDEX visits_by_patient ON visits (patient_id);
        CREATE INDEX visits_by_file ON visits (file_id);
        """

    /// Migration "v5: audit trail", as shipped.
    package static let auditV5 = """
        CREATE TABLE audit (
            seq    INTEGER PRIMARY KEY,
            at     TEXT NOT NULL,
            actor  TEXT NOT NULL,
            action TEXT NOT NULL,
            target TEXT,
            detail TEXT
        ) STRICT;
        CREATE INDEX audit_by_time ON audit (at);
        """

    /// Migration "v10: Zoom participants reports in the visit timelines", as shipped. Intervals and visits
    /// stored before it get what the merge needs from what they hold (an interval's e-mail stays unknown
    /// until its visit is next refreshed).
    package static let zoomReportsV10 = """
        ALTER TABLE zoom_events ADD COLUMN participant_email TEXT;
        UPDATE zoom_events
        SET participant_email = nullif(CAST(json_extract(raw_json, '$.payload.object.participant.email') AS TEXT), '')
        WHERE event_name LIKE '%participant%' AND json_valid(raw_json);

        ALTER TABLE zoom_visits ADD COLUMN first_s INTEGER;
        ALTER TABLE zoom_visits ADD COLUMN last_s INTEGER;
        UPDATE zoom_visits SET
            first_s = (SELECT min(event_ts) / 1000 FROM zoom_events e WHERE e.visit_uuid = zoom_visits.visit_uuid),
            last_s = (SELECT max(event_ts) / 1000 FROM zoom_events e WHERE e.visit_uuid = zoom_visits.visit_uuid);

        ALTER TABLE zoom_visit_intervals ADD COLUMN meeting_id TEXT;
        ALTER TABLE zoom_visit_intervals ADD COLUMN participant_email TEXT;
        ALTER TABLE zoom_visit_intervals ADD COLUMN joined_s INTEGER;
        ALTER TABLE zoom_visit_intervals ADD COLUMN left_s INTEGER;
        ALTER TABLE zoom_visit_intervals ADD COLUMN joined_m INTEGER;
        ALTER TABLE zoom_visit_intervals ADD COLUMN source TEXT NOT NULL DEFAULT 'webhook'
            CHECK (source IN ('webhook', 'report', 'webhook+report'));
        UPDATE zoom_visit_intervals SET
            meeting_id = (SELECT meeting_id FROM zoom_visits v WHERE v.visit_uuid = zoom_visit_intervals.visit_uuid),
            joined_s = CAST(strftime('%s', joined_at) AS INTEGER),
            left_s = CAST(strftime('%s', left_at) AS INTEGER);
        UPDATE zoom_visit_intervals SET joined_m = joined_s / 60;
        -- A report row is checked against the webhooks' intervals of its meeting and join minute by one of
        -- these, each exact to the participant: never a scan of everyone who joined that minute.
        CREATE INDEX zoom_webhook_intervals_by_id ON zoom_visit_intervals (meeting_id, joined_m, participant_id)
            WHERE source = 'webhook';
        CREATE INDEX zoom_webhook_intervals_by_email ON zoom_visit_intervals (meeting_id, joined_m, lower(participant_email))
            WHERE source = 'webhook' AND participant_email IS NOT NULL;
        CREATE INDEX zoom_webhook_intervals_by_name ON zoom_visit_intervals (meeting_id, joined_m, participant_name)
            WHERE source = 'webhook';
        CREATE INDEX zoom_webhook_intervals_by_name_alone
            ON zoom_visit_intervals (meeting_id, joined_m, participant_name)
            WHERE source = 'webhook' AND participant_email IS NULL;
        -- Report rows are resolved to visits within a window of time around what changed.
        CREATE INDEX zoom_visits_by_start ON zoom_visits (meeting_id, first_s);

        CREATE TABLE zoom_report_intervals (
            seq               INTEGER PRIMARY KEY,
            meeting_id        TEXT NOT NULL,
            meeting_uuid      TEXT,
            participant_key   TEXT NOT NULL,
            joined_s          INTEGER NOT NULL,
            -- 60 when the report gave the join to the minute only (`09:00`): matched within that minute.
            join_precision    INTEGER NOT NULL DEFAULT 1 CHECK (join_precision IN (1, 60)),
            participant_id    TEXT,
            participant_email TEXT,
            participant_name  TEXT,
            left_s            INTEGER,
            duration_seconds  INTEGER,
            meeting_start_s   INTEGER,
            meeting_end_s     INTEGER,
            source            TEXT NOT NULL CHECK (source IN ('report-csv', 'report-api')),
            visit_key         TEXT,
            file_id           TEXT NOT NULL REFERENCES files (id) DEFERRABLE INITIALLY DEFERRED,
            record            INTEGER NOT NULL
        ) STRICT;
        CREATE UNIQUE INDEX zoom_report_key
            ON zoom_report_intervals (meeting_id, ifnull(meeting_uuid, ''), participant_key, joined_s);
        CREATE INDEX zoom_report_by_visit ON zoom_report_intervals (visit_key);
        CREATE INDEX zoom_report_by_join ON zoom_report_intervals (meeting_id, joined_s);
        CREATE INDEX zoom_report_by_file ON zoom_report_intervals (file_id);
        """
}

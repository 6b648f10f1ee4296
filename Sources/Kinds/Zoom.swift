package import JSONSchema

/// One Zoom event, normalised as the Zoom events service this replaces stored it (`zoom_visit_events`).
package struct ZoomEvent: Sendable {
    /// `event`, e.g. `meeting.participant_joined`.
    package var name: String
    /// `event_ts`, milliseconds since the epoch.
    package var timestamp: Int64
    /// `payload.object.id` as text: numbers as written, so ids beyond 32 (or 53) bits survive.
    package var meetingID: String
    /// `payload.object.uuid`: one occurrence (visit) of the meeting.
    package var visitUUID: String?
    /// `participant.user_id`, else `participant.id`, else `participant.participant_uuid` (first non-empty).
    package var participantID: String?
    package var participantName: String?
    /// `participant.email`, for matching the participant in a report that has no ids.
    package var participantEmail: String?
    package var joinTime: String?
    package var leaveTime: String?
    /// `payload.object.start_time` / `end_time`.
    package var startTime: String?
    package var endTime: String?
    /// `payload.object.latency_ms` when present.
    package var latencyMs: Double?
    /// Set by interpreter events (`meeting.interpreter_requested` and its kin).
    package var interpreterRequested: Bool
    package var accountID: String?
    /// The event's JSON exactly as received.
    package var raw: String
    /// The parsed event with its meeting id as text (``ZoomReader/canonical(_:)``), for telling an
    /// identical replay from a conflicting one.
    package var value: JSONValue
}

/// A record of a Zoom file.
package enum ZoomRecord: Sendable {
    case event(ZoomEvent)
    /// An `endpoint.url_validation` challenge: the HTTP endpoint answers these; a file's copy is skipped.
    case urlValidation
}

/// Reads Zoom event files: one event object as Zoom POSTs it, a JSON array of events, or NDJSON.
package struct ZoomReader: Sendable {
    private let schema: JSONSchema

    /// - Parameter schema: the compiled `zoom_event` schema.
    package init(schema: JSONSchema) { self.schema = schema }

    package func read(_ bytes: [UInt8]) -> ParsedFile<ZoomRecord> {
        JSONRecords.read(bytes, map)
    }

    /// One record: for streaming readers that split lines themselves.
    package func record(_ raw: JSONRecords.Raw) -> Item<ZoomRecord> {
        Item(number: raw.number, line: raw.line, text: raw.text, result: map(raw))
    }

    private func map(_ raw: JSONRecords.Raw) -> Result<ZoomRecord, Problems> {
        let value: JSONValue
        switch JSONRecords.value(of: raw) {
        case .failure(let problems): return .failure(problems)
        case .success(let v): value = v
        }
        if value["event"]?.stringValue == "endpoint.url_validation" { return .success(.urlValidation) }
        if let problems = JSONRecords.violations(of: value, in: raw, against: schema) { return .failure(problems) }
        // The schema says a non-negative integer; one too large for 64 bits is refused here, not trapped on.
        guard let timestamp = Self.milliseconds(value["event_ts"]) else {
            return .failure(
                Problems([
                    RecordProblem(
                        record: raw.number,
                        line: raw.line,
                        pointer: "/event_ts",
                        message: "out of range: at most \(Int64.max) milliseconds since the epoch"
                    )
                ])
            )
        }
        let object = value["payload"]?["object"]
        let participant = object?["participant"]
        let name = value["event"]?.stringValue ?? ""
        let participantKey = ["user_id", "id", "participant_uuid"].first { Self.idText(participant?[$0]) != nil }
        let participantPointer = "/payload/object/participant/"
        let tooLong = KeyText.problems(
            [
                ("event", "/event", name), ("the meeting id", "/payload/object/id", Self.idText(object?["id"])),
                ("uuid", "/payload/object/uuid", object?["uuid"]?.stringValue),
                (
                    "the participant id", participantKey.map { participantPointer + $0 },
                    participantKey.flatMap { Self.idText(participant?[$0]) }
                ),
                ("user_name", participantPointer + "user_name", participant?["user_name"]?.stringValue),
                ("email", participantPointer + "email", participant?["email"]?.stringValue),
            ],
            record: raw.number,
            line: raw.line
        )
        if !tooLong.isEmpty { return .failure(Problems(tooLong)) }
        return .success(
            .event(
                ZoomEvent(
                    name: name,
                    timestamp: timestamp,
                    meetingID: Self.idText(object?["id"]) ?? "",
                    visitUUID: object?["uuid"]?.stringValue,
                    participantID: Self.idText(participant?["user_id"]) ?? Self.idText(participant?["id"])
                        ?? Self.idText(participant?["participant_uuid"]),
                    participantName: participant?["user_name"]?.stringValue,
                    participantEmail: participant?["email"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 },
                    joinTime: participant?["join_time"]?.stringValue,
                    leaveTime: participant?["leave_time"]?.stringValue,
                    startTime: object?["start_time"]?.stringValue,
                    endTime: object?["end_time"]?.stringValue,
                    latencyMs: object?["latency_ms"]?.doubleValue,
                    interpreterRequested: name.contains("interpreter"),
                    accountID: value["payload"]?["account_id"]?.stringValue,
                    raw: raw.raw,
                    value: Self.canonical(value)
                )
            )
        )
    }

    /// A JSON number as a whole `Int64`, read from its text (every digit kept, no trip through `Double`),
    /// or nil when it is not one or does not fit. Found by the fuzzer: `Int64(Double)` trapped on
    /// `"event_ts": 164803885555555555555519111`.
    package static func milliseconds(_ value: JSONValue?) -> Int64? {
        guard case .number(let text) = value else { return nil }
        if let whole = Int64(text) { return whole }
        guard let number = Double(text) else { return nil }
        return Int64(exactly: number)
    }

    /// `value` with `payload.object.id` as a string: a delivery that sends the id as a number and an
    /// export that sends it as a string carry the same event.
    package static func canonical(_ value: JSONValue) -> JSONValue {
        guard case .object(var members) = value,
            let p = members.firstIndex(where: { $0.key == "payload" }),
            case .object(var payload) = members[p].value,
            let o = payload.firstIndex(where: { $0.key == "object" }),
            case .object(var object) = payload[o].value,
            let i = object.firstIndex(where: { $0.key == "id" }),
            case .number(let text) = object[i].value
        else { return value }
        object[i].value = .string(text)
        payload[o].value = .object(object)
        members[p].value = .object(payload)
        return .object(members)
    }

    /// An id as text: a string as is, a number as written; nil when absent, null or empty.
    static func idText(_ value: JSONValue?) -> String? {
        switch value {
        case .string(let s) where !s.isEmpty: s
        case .number(let text): text
        default: nil
        }
    }
}

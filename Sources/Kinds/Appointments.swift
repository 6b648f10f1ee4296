package import JSONSchema

/// One appointment event, valid against schema.json's `appointment_event`.
package struct AppointmentEvent: Sendable, Equatable {
    package var eventType: String
    package var appointmentID: String
    package var patientID: String
    /// The event time as sent.
    package var timestamp: String
    /// The event time in UTC, `YYYY-MM-DDTHH:MM:SS.fffffffffZ`: sorts by instant; part of the natural key.
    package var instant: String
    package var notes: String?
}

/// Reads appointment event files: a JSON object, an array of objects, or NDJSON.
package struct AppointmentsReader: Sendable {
    private let schema: JSONSchema

    /// - Parameter schema: the compiled `appointment_event` schema.
    package init(schema: JSONSchema) { self.schema = schema }

    package func read(_ bytes: [UInt8]) -> ParsedFile<AppointmentEvent> {
        JSONRecords.read(bytes, map)
    }

    /// One record: for streaming readers that split lines themselves.
    package func record(_ raw: JSONRecords.Raw) -> Item<AppointmentEvent> {
        Item(number: raw.number, line: raw.line, text: raw.text, result: map(raw))
    }

    private func map(_ raw: JSONRecords.Raw) -> Result<AppointmentEvent, Problems> {
        let value: JSONValue
        switch JSONRecords.value(of: raw) {
        case .failure(let problems): return .failure(problems)
        case .success(let v): value = v
        }
        if let problems = JSONRecords.violations(of: value, in: raw, against: schema) { return .failure(problems) }
        // The schema guarantees these fields and their types.
        let timestamp = value["timestamp"]?.stringValue ?? ""
        guard let instant = RFC3339.normalizedDateTime(timestamp) else {
            return .failure(
                Problems([
                    RecordProblem(
                        record: raw.number,
                        line: raw.line,
                        pointer: "/timestamp",
                        message: "\(JSONSchema.describe(.string(timestamp))) is not an RFC 3339 date-time"
                    )
                ])
            )
        }
        return .success(
            AppointmentEvent(
                eventType: value["event_type"]?.stringValue ?? "",
                appointmentID: value["appointment_id"]?.stringValue ?? "",
                patientID: value["patient_id"]?.stringValue ?? "",
                timestamp: timestamp,
                instant: instant,
                notes: value["notes"]?.stringValue
            )
        )
    }
}

/// The compiled schemas of every kind, from schema.json.
package struct Catalog: Sendable {
    package let appointments: AppointmentsReader
    package let zoom: ZoomReader
    package let intake: IntakeReader
    package let zoomReport = ZoomReportReader()
    /// Every kind's schema strings that messages may show (``JSONSchema/constants``).
    package let schemaConstants: Set<String>

    /// Compiles every kind's `$defs` entry; refuses a schema with an unsupported keyword, naming it.
    package init(schemaDocument: JSONValue) throws(KindsError) {
        do {
            let schemas = try [Kind.appointments, .zoom, .intake].map { kind throws(SchemaError) in
                var schema = try JSONSchema(document: schemaDocument, entry: "/$defs/" + kind.schemaDefinition)
                schema.forbidsNUL = true
                return schema
            }
            appointments = AppointmentsReader(schema: schemas[0])
            zoom = ZoomReader(schema: schemas[1])
            intake = IntakeReader(schema: schemas[2])
            schemaConstants = schemas.reduce(into: Set()) { $0.formUnion($1.constants) }
        } catch {
            throw KindsError(description: "schema.json \(error.description)")
        }
    }

    /// Reads and compiles schema.json from `bytes`.
    package init(schemaBytes: [UInt8]) throws(KindsError) {
        let document: JSONValue
        do {
            document = try JSONParser.parse(schemaBytes)
        } catch {
            throw KindsError(description: "schema.json is not valid JSON: \(error.description)")
        }
        try self.init(schemaDocument: document)
    }
}

import Foundation
import JSONSchema
import Kinds
import Testing

func projectCatalog() throws -> Catalog {
    try Catalog(schemaBytes: [UInt8](Data(contentsOf: TestPaths.schemaJSON)))
}

func event(_ id: String, _ ts: String, type: String = "scheduled", patient: String = "P1", notes: String? = nil)
    -> String
{
    var text =
        "{\"event_type\":\"appointment.\(type)\",\"appointment_id\":\"\(id)\",\"patient_id\":\"\(patient)\",\"timestamp\":\"\(ts)\""
    if let notes { text += ",\"notes\":\"\(notes)\"" }
    return text + "}"
}

@Suite struct AppointmentsReaderTests {
    @Test func readsOneObjectAnArrayAndNDJSON() throws {
        let reader = try projectCatalog().appointments
        let one = reader.read(Array(("  \n" + event("A", "2025-01-10T12:30:00Z")).utf8))
        #expect(one.items.count == 1)
        #expect(one.items[0].line == 2)
        let array = reader.read(
            Array("[\n\(event("A", "2025-01-10T12:30:00Z")),\n\n  \(event("B", "2025-01-10T12:30:00Z"))\n]".utf8)
        )
        #expect(array.items.map(\.line) == [2, 4])
        let ndjson = reader.read(
            Array("\(event("A", "2025-01-10T12:30:00Z"))\r\n\r\n\(event("B", "2025-01-10T12:30:00Z"))\n".utf8)
        )
        #expect(ndjson.items.map(\.line) == [1, 3])
        #expect(ndjson.items.allSatisfy { if case .success = $0.result { true } else { false } })
    }

    @Test func namesTheRecordThePointerAndTheRule() throws {
        let reader = try projectCatalog().appointments
        let lines = [
            event("A", "2025-01-10T12:30:00Z"),
            event("B", "2025-01-10T12:30:00+01:00"),
            event("C", "2025-01-10 12:30"),
            event("D", "2025-02-30T10:00:00Z"),
            "{\"event_type\":\"appointment.moved\",\"appointment_id\":\"E\",\"timestamp\":\"2025-01-10T12:30:00Z\"}",
            "not json",
        ]
        let parsed = reader.read(Array(lines.joined(separator: "\n").utf8))
        let problems = parsed.items.flatMap { item -> [RecordProblem] in
            if case .failure(let p) = item.result { return p.list }
            return []
        }
        #expect(
            problems.map(\.text) == [
                "record 3 /timestamp: \"2025-01-10 12:30\" is not an RFC 3339 date-time (line 3)",
                "record 4 /timestamp: \"2025-02-30T10:00:00Z\" is not an RFC 3339 date-time (line 4)",
                "record 5 /patient_id: required property is missing (line 5)",
                "record 5 /event_type: \"appointment.moved\" is not one of \"appointment.scheduled\", \"appointment.cancelled\", \"appointment.updated\" (line 5)",
                "record 6: not valid JSON: invalid literal (column 2) (line 6)",
            ]
        )
    }

    /// SQLite's text bindings end at a NUL byte: `"P0\u0000x"` was stored as `P0`, and two ids equal up
    /// to a NUL conflicted. A string holding U+0000 is a rejected record, named by its pointer, in every
    /// kind (the intake's CSV rows go through the same schema).
    @Test func aStringHoldingNULIsRejectedNotTruncated() throws {
        let catalog = try projectCatalog()
        let line = event("Z\\u0000first", "2025-01-10T12:30:00Z", patient: "P0\\u0000x", notes: "ok")
        let parsed = catalog.appointments.read(Array(line.utf8))
        guard case .failure(let problems) = parsed.items.first?.result else {
            Issue.record("accepted: \(line)")
            return
        }
        #expect(
            problems.list.map(\.text) == [
                "record 1 /appointment_id: contains a NUL character (U+0000): not storable (line 1)",
                "record 1 /patient_id: contains a NUL character (U+0000): not storable (line 1)",
            ]
        )
    }

    @Test func aBrokenArrayOrEmptyFileIsAFileProblem() throws {
        let reader = try projectCatalog().appointments
        #expect(reader.read(Array("[\(event("A", "2025-01-10T12:30:00Z")),".utf8)).fileProblem?.line == 1)
        #expect(reader.read(Array(" \n ".utf8)).fileProblem?.message == "file is empty: no records")
        #expect(reader.read(Array("[]".utf8)).fileProblem != nil)
        #expect(reader.read(Array("{\"a\":".utf8)).fileProblem != nil)
    }
}

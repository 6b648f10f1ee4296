import ArgumentParser
import Config
import Foundation
import JSONSchema
import Kinds
import Store

struct Query: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read what carespool derived from the stored records.",
        subcommands: [PatientsQuery.self, VisitsQuery.self, AppointmentsQuery.self, ZoomQuery.self]
    )
}

struct ZoomQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "zoom",
        abstract: "A Zoom meeting's visit timelines: start, end, duration, participants' join/leave intervals, "
            + "longest latency, interpreter requested."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "The meeting id (or one visit's uuid).")
    var meeting: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        // A meeting id as Zoom prints it (`852 1848 6288`) is its digits.
        let id = zoomMeetingDigits(meeting) ?? meeting
        let visits = try await OperatorStore.reading(spoolOptions) { store in try store.reads.zoomVisits(meeting: id) }
        if json {
            let values: [JSONValue] = visits.map { visit in
                func text(_ s: String?) -> JSONValue { s.map { .string($0) } ?? .null }
                let intervals: [JSONValue] = visit.intervals.map { interval in
                    .object([
                        .init(key: "participant_id", value: .string(interval.participantID)),
                        .init(key: "participant_name", value: text(interval.participantName)),
                        .init(key: "joined_at", value: text(interval.joinedAt)),
                        .init(key: "left_at", value: text(interval.leftAt)),
                        .init(key: "source", value: .string(interval.source)),
                    ])
                }
                return .object([
                    .init(key: "meeting_id", value: .string(visit.meetingID)),
                    .init(key: "visit_uuid", value: .string(visit.visitUUID)),
                    .init(key: "started_at", value: text(visit.startedAt)),
                    .init(key: "ended_at", value: text(visit.endedAt)),
                    .init(key: "duration_seconds", value: visit.durationSeconds.map { .number(String($0)) } ?? .null),
                    // JSON has no infinity: a latency beyond a double's range (1e400) is null here.
                    .init(
                        key: "max_latency_ms",
                        value: visit.maxLatencyMs.flatMap { $0.isFinite ? .number(String($0)) : nil } ?? .null
                    ),
                    .init(key: "interpreter_requested", value: .bool(visit.interpreterRequested)),
                    .init(key: "events", value: .number(String(visit.events))),
                    .init(key: "participants", value: .array(intervals)),
                ])
            }
            print(JSONValue.object([.init(key: "visits", value: .array(values))]).compactText)
            return
        }
        if visits.isEmpty {
            print("no visits of meeting \(meeting)")
            throw ExitCode(1)
        }
        for visit in visits {
            print("meeting \(Terminal.safe(visit.meetingID))  visit \(Terminal.safe(visit.visitUUID))")
            print("  started   \(visit.startedAt ?? "-")")
            print("  ended     \(visit.endedAt ?? "-")")
            print("  duration  \(visit.durationSeconds.map { "\($0) s" } ?? "-")")
            print("  latency   \(visit.maxLatencyMs.map { "max \($0) ms" } ?? "-")")
            print("  interpreter requested: \(visit.interpreterRequested ? "yes" : "no")")
            print("  events    \(visit.events)")
            for interval in visit.intervals {
                let who = interval.participantID + (interval.participantName.map { " (\($0))" } ?? "")
                print(
                    "  \(interval.joinedAt ?? "?") – \(interval.leftAt ?? "…")  \(Terminal.safe(who))  [\(interval.source)]"
                )
            }
        }
    }
}

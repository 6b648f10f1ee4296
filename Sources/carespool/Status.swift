import ArgumentParser
import Foundation
import JSONSchema
import Kinds
import Spool
import Store

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Files per folder and kind, how long the oldest inbox file has waited, retries, the last ten failures."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @OptionGroup var hostOption: HostOption

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let kinds = Kind.allCases.map(\.rawValue)
        let spool = try spoolOptions.resolved().spool
        // The daemon's verdicts on entries it cannot claim: not counted as waiting, here as in /health.
        let unclaimable = spool.loadUnclaimable()
        var counts: [(folder: String, kind: String, files: Int?)] = []
        // Seconds the oldest file of each inbox has waited since it arrived (nil: none waits).
        var waited: [String: Int] = [:]
        let now = Clock.nowNanos()
        // An operator (group carespool-ops) may not enter processing/ or partners' folders: those counts
        // are unknown to it (nil), the rest is shown.
        func readable<T>(_ body: () throws(SpoolError) -> T) throws(SpoolError) -> T? {
            do {
                return try body()
            } catch  where error.code == EACCES || error.code == EPERM {
                return nil
            }
        }
        for kind in kinds {
            counts.append(
                ("inbox", kind, try readable { () throws(SpoolError) in try spool.pendingInInboxes(of: kind) })
            )
            if let arrived = try readable({ () throws(SpoolError) in try spool.oldestInInboxes(of: kind) }) ?? nil {
                waited[kind] = Int(max(0, now.subtractingReportingOverflow(arrived).partialValue / 1_000_000_000))
            }
            counts.append(
                (
                    "processing", kind,
                    try readable { () throws(SpoolError) in try spool.pendingCount(spool.processingPath(kind)) }
                )
            )
            var done = 0
            for day in try spool.scanAll(spool.donePath(kind)) where !day.hasPrefix(".") {
                done += try spool.scanAll(spool.donePath(kind) + "/" + day).filter { !$0.hasPrefix(".") }.count
            }
            counts.append(("done", kind, done))
            let failed = try spool.scanAll(spool.failedPath(kind)).filter { $0.hasSuffix(SpoolName.errorSuffix) }.count
            counts.append(("failed", kind, failed))
        }
        let retrying =
            spool.readState(SpoolName.retryState)
            .map { String(decoding: $0, as: UTF8.self) }?.trimmingCharacters(in: .whitespacesAndNewlines) ?? "[]"
        var failures: [[String: String?]] = []
        var zoom: [(event: String, received: Int, inserted: Int)] = []
        var backlog = NotificationBacklog(count: 0, mostAttempts: 0)
        // A store that does not answer (a PostgreSQL server down) is said, after what the spool shows.
        var unanswered: ExitCode?
        var hosts = false
        do {
            if let store = try await OperatorStore.open(spoolOptions, host: hostOption.host, missingIsNil: true) {
                do {
                    let database = store.reads
                    hosts = database.knowsHosts
                    failures = try database.lastFailures(limit: 10, host: hostOption.host)
                    zoom = try database.zoomCounters()
                    // A database from before migration v9 has no queue: nothing is owed.
                    backlog = (try? database.notificationBacklog()) ?? backlog
                    await store.close()
                } catch {
                    await store.close()
                    throw error
                }
            }
        } catch let error as StoreError where error.isTransient {
            FileHandle.standardError.write(
                Data("carespool status: the store did not answer: \(error.description)\n".utf8)
            )
            unanswered = ExitCode(69)
        } catch let code as ExitCode where code.rawValue == 69 {
            unanswered = code
        }
        defer { if let unanswered { Status.exit(withError: unanswered) } }
        if json {
            var out = "{\"folders\":["
            out += counts.map { count in
                let oldest =
                    count.folder == "inbox"
                    ? ",\"oldest_seconds\":" + (waited[count.kind].map(String.init) ?? "null") : ""
                let files = count.files.map(String.init) ?? "null"
                return "{\"folder\":\"\(count.folder)\",\"kind\":\"\(count.kind)\",\"files\":\(files)\(oldest)}"
            }
            .joined(separator: ",")
            out += "],\"retrying\":" + (retrying.isEmpty ? "[]" : retrying) + ",\"unclaimable\":\(unclaimable)"
            out +=
                ",\"notifications\":{\"undelivered\":\(backlog.count),\"oldest_finished_at\":"
                + (backlog.oldestFinishedAt.map { JSONValue.quoted($0) } ?? "null") + ",\"most_attempts\":"
                + "\(backlog.mostAttempts),\"last_error\":" + (backlog.lastError.map { JSONValue.quoted($0) } ?? "null")
                + "}"
            out += ",\"last_failures\":["
            out += failures.map { row in
                "{"
                    + (["id", "kind", "original_name", "outcome", "finished_at", "error"] + (hosts ? ["host"] : [])).map
                {
                    key in
                    let value = row[key] ?? nil
                    return "\"\(key)\":" + (value.map { JSONValue.quoted($0) } ?? "null")
                }.joined(separator: ",") + "}"
            }.joined(separator: ",")
            out += "],\"zoom_events\":{\"received\":\(zoom.reduce(0) { $0 + $1.received }),"
            out += "\"inserted\":\(zoom.reduce(0) { $0 + $1.inserted }),\"by_event\":["
            out += zoom.map {
                "{\"event\":\(JSONValue.quoted($0.event)),\"received\":\($0.received),\"inserted\":\($0.inserted)}"
            }
            .joined(separator: ",")
            out += "]}}"
            print(out)
            return
        }
        print("folder      " + kinds.map { $0.padding(toLength: 14, withPad: " ", startingAt: 0) }.joined())
        for folder in ["inbox", "processing", "done", "failed"] {
            let row = kinds.map { kind in
                ((counts.first { $0.folder == folder && $0.kind == kind }?.files).map { $0.map(String.init) ?? "-" }
                    ?? "0").padding(toLength: 14, withPad: " ", startingAt: 0)
            }
            print(folder.padding(toLength: 12, withPad: " ", startingAt: 0) + row.joined())
            if folder == "inbox" {
                let ages = kinds.map {
                    (waited[$0].map(Self.age) ?? "-").padding(toLength: 14, withPad: " ", startingAt: 0)
                }
                print("  waiting   " + ages.joined())
            }
        }
        if counts.contains(where: { $0.files == nil }) {
            print("(-: a folder this user may not read; run as carespool, or root, for every count)")
        }
        print("retrying: " + (retrying == "[]" ? "none" : retrying))
        if unclaimable > 0 {
            print("unclaimable: \(unclaimable) inbox entries cannot be claimed (left in place; the log says why)")
        }
        if backlog.count == 0 {
            print("notifications: none undelivered")
        } else {
            print(
                "notifications: \(backlog.count) undelivered, the oldest for a verdict of "
                    + "\(backlog.oldestFinishedAt ?? "?"), up to \(backlog.mostAttempts) attempts; last error: "
                    + Terminal.safe(backlog.lastError ?? "none yet")
            )
        }
        let received = zoom.reduce(0) { $0 + $1.received }
        let inserted = zoom.reduce(0) { $0 + $1.inserted }
        print("zoom events: received \(received), inserted \(inserted) (duplicates excluded)")
        for counter in zoom { print("  \(counter.event): received \(counter.received), inserted \(counter.inserted)") }
        print("last failures:")
        if failures.isEmpty { print("  none") }
        for row in failures {
            let fields = (["finished_at", "id", "kind", "outcome"] + (hosts ? ["host"] : []) + ["original_name"]).map {
                (row[$0] ?? nil) ?? ""
            }
            print("  " + Terminal.safe(fields.joined(separator: "  ")))
            print("    " + Terminal.safe((row["error"] ?? nil) ?? ""))
        }
    }

    /// `42s`, `12m`, `3h`, `2d`: how long the oldest inbox file has waited, at a glance.
    static func age(_ seconds: Int) -> String {
        switch seconds {
        case ..<120: "\(seconds)s"
        case ..<7_200: "\(seconds / 60)m"
        case ..<172_800: "\(seconds / 3_600)h"
        default: "\(seconds / 86_400)d"
        }
    }
}

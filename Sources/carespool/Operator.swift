// Operator commands: what failed and why, one file's whole story, atomic drops for scripts, retries,
// reports, queries of stored data and the audit trail. Human tables by default, --json on each.
// Every action that changes the spool or reads patient data is recorded in the audit trail.

import ArgumentParser
import Foundation
import JSONSchema
import Kinds
import Pipeline
import Spool
import Store

/// Who is acting, for the audit trail: the Unix user (the invoking user as well, under sudo).
enum Operator {
    static var actor: String {
        let user = Spool.userName(getuid())
        if let invoker = ProcessInfo.processInfo.environment["SUDO_USER"], !invoker.isEmpty, invoker != user {
            return "\(invoker) (sudo as \(user))"
        }
        return user
    }

    /// The database, which must exist (a command never creates one).
    static func database(_ path: String, readonly: Bool) throws -> AppDatabase {
        guard FileManager.default.fileExists(atPath: path) else { throw ValidationError("no database at \(path)") }
        return try AppDatabase.open(path: path, readonly: readonly)
    }

    static func audit(_ database: String, action: String, target: String?, detail: String?) throws {
        try Self.database(database, readonly: false).audit(
            at: Clock.timestamp(),
            actor: actor,
            action: action,
            target: target,
            detail: detail
        )
    }

    /// Rows as an aligned text table; every cell made safe for a terminal (``Terminal/safe(_:)``).
    static func table(_ header: [String], _ rawRows: [[String]]) -> String {
        let rows = rawRows.map { $0.map(Terminal.safe) }
        var widths = header.map(\.count)
        for row in rows {
            for (index, cell) in row.enumerated() where index < widths.count {
                widths[index] = max(widths[index], cell.count)
            }
        }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { index, cell in
                index == cells.count - 1 ? cell : cell.padding(toLength: widths[index], withPad: " ", startingAt: 0)
            }.joined(separator: "  ")
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }

    static func text(_ value: String?) -> JSONValue { value.map { .string($0) } ?? .null }
    static func number(_ value: Int) -> JSONValue { .number(String(value)) }

    static func json(_ entry: LedgerEntry, location: String? = nil) -> JSONValue {
        var members: [JSONMember] = [
            .init(key: "id", value: .string(entry.id)), .init(key: "kind", value: .string(entry.kind)),
            .init(key: "original_name", value: .string(entry.originalName)),
            .init(key: "size", value: number(entry.size)),
            .init(key: "decompressed_size", value: entry.decompressedSize.map(number) ?? .null),
            .init(key: "received_at", value: .string(entry.receivedAt)),
            .init(key: "finished_at", value: .string(entry.finishedAt)),
            .init(key: "outcome", value: .string(entry.outcome)), .init(key: "stored", value: number(entry.stored)),
            .init(key: "duplicates", value: number(entry.duplicates)),
            .init(key: "rejected", value: number(entry.rejected)),
            .init(
                key: "errors",
                value: .array((entry.report?.errors ?? []).prefix(20).map { .string($0.text) })
            ),
        ]
        if let host = entry.host { members.append(.init(key: "host", value: .string(host))) }
        if let location { members.append(.init(key: "location", value: .string(location))) }
        return .object(members)
    }
}

struct Failed: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Failed and partial files, newest first, each with its reason and first errors."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "Only this kind: appointments, zoom, intake.")
    var kind: String?

    @Option(help: "Only files finished at or after this time (RFC 3339, or a day: 2026-11-23).")
    var since: String?

    @Option(help: "At most this many files.")
    var limit: Int = 50

    @OptionGroup var hostOption: HostOption

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let (entries, hosts) = try await OperatorStore.reading(spoolOptions, host: hostOption.host) { store in
            (
                try store.reads.ledger(
                    outcomes: ["rejected", "partial"],
                    kind: kind,
                    since: since,
                    host: hostOption.host,
                    limit: limit
                ),
                store.reads.knowsHosts
            )
        }
        if json {
            print(JSONValue.object([.init(key: "files", value: .array(entries.map { Operator.json($0) }))]).compactText)
            return
        }
        if entries.isEmpty {
            print("no failed files")
            return
        }
        // A store several hosts share says which host holds each file (its spool has the file).
        let header = ["ID", "KIND", "OUTCOME", "FINISHED", "STORED", "REJECTED"] + (hosts ? ["HOST"] : [])
        print(
            Operator.table(
                header + ["NAME / FIRST ERROR"],
                entries.flatMap { entry -> [[String]] in
                    var row: [String] = [
                        entry.id, entry.kind, entry.outcome, entry.finishedAt, "\(entry.stored)", "\(entry.rejected)",
                    ]
                    if hosts { row.append(entry.host ?? "") }
                    row.append(entry.originalName)
                    let errors: [[String]] = (entry.report?.errors ?? []).prefix(3).map {
                        Array(repeating: "", count: header.count) + ["  " + $0.text]
                    }
                    return [row] + errors
                }
            )
        )
    }
}

struct Show: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "One file: its ledger row, its errors, and where the file and its sidecars are now."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Argument(help: "The file's id (the part of its spool name before '--').")
    var id: String

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let spool = try spoolOptions.resolved().spool
        var places: [String] = []
        for kind in spool.kinds {
            // An operator may not enter processing/: what it may not read, it does not list.
            let prefix = id + SpoolName.separator
            for folder in [spool.inboxPath(kind), spool.processingPath(kind), spool.failedPath(kind)] {
                for name in (try? spool.scanAll(folder)) ?? [] where name.hasPrefix(prefix) {
                    places.append(folder + "/" + name)
                }
            }
            for day in (try? spool.scanAll(spool.donePath(kind))) ?? [] {
                let folder = spool.donePath(kind) + "/" + day
                for name in (try? spool.scanAll(folder)) ?? [] where name.hasPrefix(prefix) {
                    places.append(folder + "/" + name)
                }
            }
        }
        // No store yet (nothing processed): the file may still be waiting somewhere.
        var entry: LedgerEntry?
        if let store = try await OperatorStore.open(spoolOptions, missingIsNil: true) {
            do {
                entry = try store.reads.ledgerEntry(id: id)
                await store.close()
            } catch {
                await store.close()
                throw error
            }
        }
        if entry == nil && places.isEmpty { throw ValidationError("no file with id \(id)") }
        if json {
            var members: [JSONMember] = [.init(key: "id", value: .string(id))]
            // A large file some host is still storing has no ledger row yet: `ledger` stays null, and
            // `processing` says which host holds it.
            let processing = entry?.outcome == "processing"
            members.append(.init(key: "ledger", value: processing ? .null : entry.map { Operator.json($0) } ?? .null))
            if processing {
                members.append(
                    .init(key: "processing", value: .object([.init(key: "host", value: Operator.text(entry?.host))]))
                )
            }
            members.append(.init(key: "paths", value: .array(places.sorted().map { .string($0) })))
            print(JSONValue.object(members).compactText)
            return
        }
        print("file \(id)")
        if let entry, entry.outcome == "processing" {
            // A large file some host is storing chunk by chunk: no verdict, its name and size not known yet.
            print(
                "  in processing on host \(Terminal.safe(entry.host ?? "?")): its records are being stored (no verdict yet)"
            )
        } else if let entry {
            print("  kind       \(entry.kind)")
            if let host = entry.host { print("  host       \(Terminal.safe(host))") }
            print(
                "  name       \(Terminal.safe(entry.originalName)) (\(entry.size) bytes"
                    + (entry.decompressedSize.map { ", gzip: \($0) bytes decompressed" } ?? "") + ")"
            )
            print("  received   \(entry.receivedAt)")
            print("  finished   \(entry.finishedAt)")
            print(
                "  outcome    \(entry.outcome): stored \(entry.stored), duplicates \(entry.duplicates), rejected \(entry.rejected)"
            )
            for problem in (entry.report?.errors ?? []).prefix(20) { print("    \(Terminal.safe(problem.text))") }
        } else {
            print("  no ledger row yet (waiting or in processing)")
        }
        for place in places.sorted() { print("  at \(Terminal.safe(place))") }
    }
}

struct Drop: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Drop files into an inbox atomically (tmp, fsync, rename), for scripts.",
        discussion: "A name already waiting in the inbox is never replaced: that file is refused."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "The kind: appointments, zoom, intake.")
    var kind: String

    @Argument(help: "The files to drop; - reads standard input (with --name).")
    var files: [String]

    @Option(help: "The name in the inbox of the file read from standard input (-).")
    var name: String?

    @Flag(help: "Print JSON: where each file went.")
    var json = false

    /// Run by another user through sudo: files are then read from standard input only, opened by that
    /// user's own shell with that user's rights — a path would be opened with the daemon user's, and an
    /// operator could copy into failed/ what only the daemon may read (a secret, another partner's file).
    static var underSudo: Bool {
        guard let invoker = ProcessInfo.processInfo.environment["SUDO_UID"].flatMap({ uid_t($0) }) else {
            return false
        }
        return invoker != getuid()
    }

    func validate() throws {
        if files.contains("-") {
            guard files == ["-"] else { throw ValidationError("- (standard input) is dropped alone") }
            guard let name, !name.isEmpty, !name.contains("/"), name != ".", name != ".." else {
                throw ValidationError("- (standard input) needs --name NAME, a file name without /")
            }
        } else if name != nil {
            throw ValidationError("--name names the file read from standard input (-)")
        }
        if Self.underSudo && files != ["-"] {
            throw ValidationError(
                "under sudo, drop reads its file from standard input, opened with your own rights: "
                    + "sudo -u carespool carespool drop --kind KIND --name NAME - < FILE"
            )
        }
    }

    func run() async throws {
        let spool = try spoolOptions.resolved().spool
        let auditStore = await OperatorStore.forAudit(spoolOptions)
        guard let inbox = spool.inboxes.first(where: { $0.kind == kind }) else {
            throw ValidationError("unknown kind \(kind); one of \(spool.kinds.joined(separator: ", "))")
        }
        var failures = 0
        var dropped: [JSONValue] = []
        defer { if json { print(JSONValue.object([.init(key: "dropped", value: .array(dropped))]).compactText) } }
        let ids = IDGenerator()
        for file in files {
            let read =
                file == "-"
                ? FileHandle.standardInput.readDataToEndOfFile() : FileManager.default.contents(atPath: file)
            guard let data = read else {
                FileHandle.standardError.write(Data("cannot read \(Terminal.safe(file))\n".utf8))
                failures += 1
                continue
            }
            let name = file == "-" ? self.name ?? "stdin" : (file as NSString).lastPathComponent
            do {
                // The id it will be known by: in the ledger, `show`, `GET /spool/{id}` and messages.
                let id = ids.next()
                try spool.drop(bytes: Array(data), into: inbox, name: name, id: id)
                if json {
                    dropped.append(
                        .object([
                            .init(key: "file", value: .string(file)),
                            .init(key: "path", value: .string(inbox.path + "/" + name)),
                            .init(key: "id", value: .string(id)),
                        ])
                    )
                } else {
                    print("dropped \(Terminal.safe(file)) into \(Terminal.safe(inbox.path + "/" + name)) as \(id)")
                }
                auditStore?.recordQuietly(
                    action: "drop",
                    target: kind + "/" + name,
                    detail: "\(data.count) bytes from " + (file == "-" ? "standard input" : file)
                )
            } catch {
                FileHandle.standardError.write(Data("cannot drop \(file): \(error.description)\n".utf8))
                failures += 1
            }
        }
        await auditStore?.close()
        if failures > 0 { throw ExitCode(1) }
    }
}

struct Report: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Files and records per day, kind and outcome."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "From this day (2026-11-01) or time on.")
    var since: String?

    @OptionGroup var hostOption: HostOption

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let (rows, hosts) = try await OperatorStore.reading(spoolOptions, host: hostOption.host) {
            (try $0.reads.dailyReport(since: since, host: hostOption.host), $0.reads.knowsHosts)
        }
        if json {
            let values: [JSONValue] = rows.map { row in
                .object(
                    [
                        .init(key: "day", value: .string(row.day)), .init(key: "kind", value: .string(row.kind)),
                        .init(key: "outcome", value: .string(row.outcome)),
                    ] + (row.host.map { [.init(key: "host", value: .string($0))] } ?? []) + [
                        .init(key: "files", value: Operator.number(row.files)),
                        .init(key: "stored", value: Operator.number(row.stored)),
                        .init(key: "duplicates", value: Operator.number(row.duplicates)),
                        .init(key: "rejected", value: Operator.number(row.rejected)),
                    ]
                )
            }
            print(JSONValue.object([.init(key: "days", value: .array(values))]).compactText)
            return
        }
        print(
            Operator.table(
                ["DAY", "KIND", "OUTCOME"] + (hosts ? ["HOST"] : []) + ["FILES", "STORED", "DUPLICATES", "REJECTED"],
                rows.map {
                    [$0.day, $0.kind, $0.outcome] + (hosts ? [$0.host ?? ""] : [])
                        + ["\($0.files)", "\($0.stored)", "\($0.duplicates)", "\($0.rejected)"]
                }
            )
        )
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The audit trail: every file's outcome and every operator action, with who and when."
    )

    @OptionGroup var spoolOptions: SpoolOptions

    @Option(help: "From this day (2026-11-01) or time on.")
    var since: String?

    @Option(help: "At most this many rows, oldest first.")
    var limit: Int = 1_000

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws {
        let entries = try await OperatorStore.reading(spoolOptions) {
            try $0.reads.auditEntries(since: since, limit: limit)
        }
        if json {
            let values: [JSONValue] = entries.map { entry in
                .object([
                    .init(key: "seq", value: .number(String(entry.seq))), .init(key: "at", value: .string(entry.at)),
                    .init(key: "actor", value: .string(entry.actor)),
                    .init(key: "action", value: .string(entry.action)),
                    .init(key: "target", value: Operator.text(entry.target)),
                    .init(key: "detail", value: Operator.text(entry.detail)),
                ])
            }
            print(JSONValue.object([.init(key: "audit", value: .array(values))]).compactText)
            return
        }
        print(
            Operator.table(
                ["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
                entries.map { [$0.at, $0.actor, $0.action, $0.target ?? "", $0.detail ?? ""] }
            )
        )
    }
}

/// Paging like the ingestion pipeline's `GET /patients?page=&page_size=`.
struct Paging: ParsableArguments {
    @Option(help: "Page number, from 1.")
    var page: Int = 1

    @Option(help: "Rows per page (at most 1000).")
    var pageSize: Int = 50

    func validate() throws {
        guard page >= 1, (1...1_000).contains(pageSize) else {
            throw ValidationError("--page must be 1 or more and --page-size 1 to 1000")
        }
    }
}

struct PatientsQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "patients",
        abstract: "Patients with their names, birth date and number of visits (recorded in the audit trail)."
    )

    @OptionGroup var spoolOptions: SpoolOptions
    @OptionGroup var paging: Paging

    @Option(help: "Exactly this patient (the `id` of --json): prints that one patient's JSON object.")
    var id: Int64?

    @Option(help: "Exactly this MRN.")
    var mrn: String?

    @Option(help: "First names starting with this (case-insensitive).")
    var firstName: String?

    @Option(help: "Last names starting with this (case-insensitive).")
    var lastName: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws { try await OperatorStore.reading(spoolOptions) { try run($0) } }

    func run(_ store: OperatorStore) throws {
        let database = store.reads
        let result = try database.patients(
            id: id,
            mrn: mrn,
            firstName: firstName,
            lastName: lastName,
            page: paging.page,
            pageSize: paging.pageSize
        )
        let filter = [("id", id.map(String.init)), ("mrn", mrn), ("first_name", firstName), ("last_name", lastName)]
            .compactMap { key, value in value.map { "\(key)=\($0)" } }.joined(separator: " ")
        try store.audit(
            action: "query.patients",
            target: filter.isEmpty ? nil : filter,
            detail: "page \(paging.page), \(result.rows.count) of \(result.total) rows"
        )
        if json || id != nil {
            // The replaced ingestion pipeline's `GET /patients` and `GET /patients/{id}` shapes, key for key,
            // so that scripts written against it keep working.
            let visits = try database.visits(ofPatients: result.rows.map(\.id))
            let values: [JSONValue] = result.rows.map { row in
                .object([
                    .init(key: "id", value: .number(String(row.id))),
                    .init(key: "mrn", value: .string(row.mrn)),
                    .init(
                        key: "person",
                        value: .object([
                            .init(key: "first_name", value: .string(row.firstName)),
                            .init(key: "last_name", value: .string(row.lastName)),
                            .init(key: "birth_date", value: .string(row.birthDate)),
                        ])
                    ),
                    .init(
                        key: "visits",
                        value: .array(
                            (visits[row.id] ?? []).map { visit in
                                .object([
                                    .init(key: "id", value: .number(String(visit.id))),
                                    .init(key: "visit_account_number", value: .string(visit.number)),
                                    .init(key: "visit_date", value: .string(visit.date)),
                                    .init(key: "reason", value: visit.reason.map { .string($0) } ?? .null),
                                ])
                            }
                        )
                    ),
                ])
            }
            if id != nil {
                guard let patient = values.first else {
                    FileHandle.standardError.write(Data("no patient with id \(id!)\n".utf8))
                    throw ExitCode(1)
                }
                print(patient.compactText)
                return
            }
            print(
                JSONValue.object([
                    .init(key: "total", value: Operator.number(result.total)),
                    .init(key: "page", value: Operator.number(paging.page)),
                    .init(key: "page_size", value: Operator.number(paging.pageSize)),
                    .init(key: "patients", value: .array(values)),
                ]).compactText
            )
            return
        }
        print(
            Operator.table(
                ["MRN", "FIRST NAME", "LAST NAME", "BIRTH DATE", "VISITS"],
                result.rows.map { [$0.mrn, $0.firstName, $0.lastName, $0.birthDate, "\($0.visits)"] }
            )
        )
        print("page \(paging.page): \(result.rows.count) of \(result.total)")
    }
}

struct VisitsQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "visits",
        abstract: "Visits, newest first, optionally of one patient (recorded in the audit trail)."
    )

    @OptionGroup var spoolOptions: SpoolOptions
    @OptionGroup var paging: Paging

    @Option(help: "Only this patient's visits.")
    var mrn: String?

    @Flag(help: "Print JSON.")
    var json = false

    func run() async throws { try await OperatorStore.reading(spoolOptions) { try run($0) } }

    func run(_ store: OperatorStore) throws {
        let result = try store.reads.visits(
            mrn: mrn,
            page: paging.page,
            pageSize: paging.pageSize
        )
        try store.audit(
            action: "query.visits",
            target: mrn.map { "mrn=\($0)" },
            detail: "page \(paging.page), \(result.rows.count) of \(result.total) rows"
        )
        if json {
            let values: [JSONValue] = result.rows.map { row in
                .object([
                    .init(key: "visit_account_number", value: .string(row.visitAccountNumber)),
                    .init(key: "mrn", value: .string(row.mrn)), .init(key: "visit_date", value: .string(row.visitDate)),
                    .init(key: "reason", value: Operator.text(row.reason)),
                    .init(key: "file_id", value: .string(row.fileID)),
                ])
            }
            print(
                JSONValue.object([
                    .init(key: "total", value: Operator.number(result.total)),
                    .init(key: "page", value: Operator.number(paging.page)),
                    .init(key: "visits", value: .array(values)),
                ]).compactText
            )
            return
        }
        print(
            Operator.table(
                ["VISIT", "MRN", "DATE", "FILE", "REASON"],
                result.rows.map { [$0.visitAccountNumber, $0.mrn, $0.visitDate, $0.fileID, $0.reason ?? ""] }
            )
        )
        print("page \(paging.page): \(result.rows.count) of \(result.total)")
    }
}

struct AppointmentsQuery: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "appointments",
        abstract: "Appointments' current state, or their stored events (recorded in the audit trail).",
        discussion: """
            The table shows each appointment's current state; --events shows the stored events instead. \
            --json prints the stored events as the replaced appointment receiver's GET /events did: an \
            array of {id, event_type, appointment_id, patient_id, timestamp, notes, received_at}, in the \
            order they were stored. --json --current prints the current states as \
            {total, page, appointments: [...]}.
            """
    )

    @OptionGroup var spoolOptions: SpoolOptions
    @OptionGroup var paging: Paging

    @Option(help: "Exactly this appointment.")
    var id: String?

    @Option(help: "Only this patient's appointments.")
    var patient: String?

    @Flag(help: "The stored events, not the current states.")
    var events = false

    @Flag(help: "With --json: the current states, not the events.")
    var current = false

    @Flag(help: "Print JSON (the stored events, as GET /events listed them).")
    var json = false

    func validate() throws {
        if current && !json { throw ValidationError("--current goes with --json (the table shows the current states)") }
        if current && events { throw ValidationError("--current and --events exclude each other") }
    }

    func run() async throws { try await OperatorStore.reading(spoolOptions) { try run($0) } }

    func run(_ store: OperatorStore) throws {
        let database = store.reads
        let filter = [("id", id), ("patient", patient)].compactMap { key, value in value.map { "\(key)=\($0)" } }
            .joined(separator: " ")
        func audit(_ what: String, shown: Int, of total: Int) throws {
            try store.audit(
                action: "query.appointments",
                target: filter.isEmpty ? nil : filter,
                detail: "\(what)page \(paging.page), \(shown) of \(total) rows"
            )
        }
        if events || (json && !current) {
            let result = try database.appointmentEvents(
                id: id,
                patient: patient,
                page: paging.page,
                pageSize: paging.pageSize
            )
            try audit("events, ", shown: result.rows.count, of: result.total)
            if json {
                let values: [JSONValue] = result.rows.map { event in
                    .object([
                        .init(key: "id", value: Operator.number(Int(event.id))),
                        .init(key: "event_type", value: .string(event.eventType)),
                        .init(key: "appointment_id", value: .string(event.appointmentID)),
                        .init(key: "patient_id", value: .string(event.patientID)),
                        .init(key: "timestamp", value: .string(event.timestamp)),
                        .init(key: "notes", value: event.notes.map { .string($0) } ?? .null),
                        .init(key: "received_at", value: .string(event.receivedAt)),
                    ])
                }
                print(JSONValue.array(values).compactText)
                // The array is GET /events' shape: how far it goes is said beside it.
                if result.rows.count < result.total {
                    FileHandle.standardError.write(
                        Data(
                            "page \(paging.page): \(result.rows.count) of \(result.total) events (--page, --page-size)\n"
                                .utf8
                        )
                    )
                }
                return
            }
            print(
                Operator.table(
                    ["ID", "APPOINTMENT", "PATIENT", "EVENT", "TIMESTAMP", "RECEIVED"],
                    result.rows.map {
                        [String($0.id), $0.appointmentID, $0.patientID, $0.eventType, $0.timestamp, $0.receivedAt]
                    }
                )
            )
            print("page \(paging.page): \(result.rows.count) of \(result.total)")
            return
        }
        let result = try database.appointments(
            id: id,
            patient: patient,
            page: paging.page,
            pageSize: paging.pageSize
        )
        try audit("", shown: result.rows.count, of: result.total)
        if json {
            let values: [JSONValue] = result.rows.map { row in
                .object([
                    .init(key: "appointment_id", value: .string(row.id)),
                    .init(key: "patient_id", value: .string(row.patient)),
                    .init(key: "status", value: .string(row.status)),
                    .init(key: "event_type", value: .string(row.eventType)),
                    .init(key: "timestamp", value: .string(row.at)),
                ])
            }
            print(
                JSONValue.object([
                    .init(key: "total", value: Operator.number(result.total)),
                    .init(key: "page", value: Operator.number(paging.page)),
                    .init(key: "appointments", value: .array(values)),
                ]).compactText
            )
            return
        }
        print(
            Operator.table(
                ["APPOINTMENT", "PATIENT", "STATUS", "LAST EVENT", "AT"],
                result.rows.map { [$0.id, $0.patient, $0.status, $0.eventType, $0.at] }
            )
        )
        print("page \(paging.page): \(result.rows.count) of \(result.total)")
    }
}

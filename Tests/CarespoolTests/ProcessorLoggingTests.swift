import Foundation
import InMemoryLogging
import Kinds
import Logging
import Pipeline
import ServiceLifecycle
import Spool
import Store
import Testing

/// The processor in-process with an in-memory log handler: one line per file, and never a payload value.
@Suite struct ProcessorLoggingTests {
    @Test func logsIdsOutcomesCountsAndTimingsButNeverAValue() async throws {
        let dir = TempDir("logging")
        defer { dir.cleanup() }
        let handler = InMemoryLogHandler()
        let logger = Logger(label: "test") { _ in handler }
        let spool = Spool(root: dir.path + "/spool", kinds: Kind.allCases.map(\.rawValue))
        try spool.prepare()
        let processor = Processor(
            spool: spool,
            database: try AppDatabase.open(path: dir.file("db.sqlite3")),
            catalog: try projectCatalog(),
            configuration: PipelineConfiguration(settle: .milliseconds(100), rescanInterval: .milliseconds(200)),
            logger: logger
        )
        let group = ServiceGroup(services: [processor], logger: logger)
        let secrets = ["PT-SECRET-991", "Needs wheelchair access", "2030-04-05T06:07:08Z", "Jane Doe intake"]
        let inbox = spool.inboxes[0]
        try spool.drop(
            bytes: Array(event("APPT-1", secrets[2], patient: secrets[0], notes: secrets[1]).utf8),
            into: inbox,
            name: "\(secrets[3]).json"
        )
        try spool.drop(
            bytes: Array((event("APPT-2", "2030-04-05 06:07", patient: secrets[0]) + "\n").utf8),
            into: inbox,
            name: "\(secrets[3]) 2.json"
        )
        try await withThrowingTaskGroup(of: Void.self) { tasks in
            tasks.addTask { try await group.run() }
            let finished = await eventually {
                handler.entries.filter { $0.message.description == "file finished" }.count == 2
            }
            #expect(finished)
            await group.triggerGracefulShutdown()
            try await tasks.waitForAll()
        }
        let lines = handler.entries.filter { $0.message.description == "file finished" }
        #expect(Set(lines.compactMap { $0.metadata["file.outcome"]?.description }) == ["accepted", "rejected"])
        for line in lines {
            #expect(
                Set(line.metadata.keys).isSuperset(of: [
                    "file.id", "file.kind", "file.outcome", "file.stored", "file.ms",
                ])
            )
        }
        let everything = handler.entries.map { "\($0.message) \($0.metadata)" }.joined(separator: "\n")
        for secret in secrets {
            #expect(!everything.contains(secret), "a log line carries \(secret)")
        }
    }
}

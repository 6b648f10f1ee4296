// Notify: tells an operator's hook program and/or webhook of verdicts, from the queue the ledger keeps
// (Store/Notifications.swift: a row per verdict and target, written in the verdict's transaction).
//
// At least once: a row is deleted only after its delivery succeeded, so a kill -9 between the two
// delivers it again at the next start (the document's `id` lets a receiver drop the repeat). Failures
// are retried with doubling delays up to a ceiling, for ever; `carespool status` shows what is owed.
// Runs beside the pipeline, a worker per target delivering one at a time on a thread of its own: a slow
// or hanging hook or receiver (bounded by `timeout_s`) never holds a file back, nor the other target. Never sends or logs a field value; the
// file's name only when the operator enables it (`include_name`).

import Dispatch
import JSONSchema
package import Logging
import Metrics
package import ServiceLifecycle
package import Store
import Synchronization
import WebhookSignatures

#if canImport(Glibc)
    import Glibc
#endif

/// How one delivery went.
enum Delivery: Sendable, Equatable {
    case delivered
    /// Why not: an exit status, an HTTP status, a connection error — never a value.
    case failed(String)
    /// Abandoned: the daemon is stopping.
    case cancelled
}

/// What the executable configures: targets, their settings, the retry schedule.
package struct NotifierConfiguration: Sendable {
    package var command: String?
    package var webhook: (host: String, port: Int, path: String, key: [UInt8])?
    package var includeName = false
    package var timeout: Duration = .seconds(30)
    package var retryInitial: Duration = .seconds(1)
    package var retryMax: Duration = .seconds(3_600)

    package init() {}

    /// The targets rows are queued for, in order.
    package var targets: [String] { (command != nil ? ["command"] : []) + (webhook != nil ? ["webhook"] : []) }
}

package final class Notifier: Service, Sendable {
    private let database: any OwedNotifications
    private let configuration: NotifierConfiguration
    private let logger: Logger
    private let commandQueue = DispatchQueue(label: "carespool.notify.command")
    private let webhookQueue = DispatchQueue(label: "carespool.notify.webhook")
    private let host: String

    /// The journal's MESSAGE_ID of `notification not delivered`: frozen, like the outcomes' own.
    package static let undeliveredMessageID = "f4433425c7cc8c83fa10207deaedae2b"

    package init(database: any OwedNotifications, configuration: NotifierConfiguration, logger: Logger) {
        self.database = database
        self.configuration = configuration
        self.logger = logger
        var name = [CChar](repeating: 0, count: 256)
        host = gethostname(&name, name.count - 1) == 0 ? String(cString: name) : "localhost"
        // A hook that exits before reading its stdin must not kill the daemon with SIGPIPE.
        signal(SIGPIPE, SIG_IGN)
    }

    package func run() async throws {
        if let dropped = try? await database.dropNotifications(except: configuration.targets), dropped > 0 {
            logger.warning(
                "notifications dropped: their target is no longer configured",
                metadata: ["notify.dropped": "\(dropped)"]
            )
        }
        // One worker per target: a receiver that never answers delays only its own notifications.
        await withGracefulShutdownHandler {
            await withTaskGroup(of: Void.self) { group in
                for target in configuration.targets {
                    group.addTask { await self.work(target) }
                }
            }
        } onGracefulShutdown: {
            self.stopping.withLock { $0 = true }
        }
    }

    /// Whether the daemon is stopping: a delivery in progress is abandoned (a hook killed with its group),
    /// not counted as an attempt, and made again after the next start.
    let stopping = Mutex(false)

    /// What a worker could not write to the queue (the database busy, full or read-only): kept here, and
    /// written as soon as it can be, so that a delivered notification is never delivered again meanwhile
    /// and a failed one keeps its backoff.
    private enum Unsaved {
        case delivered
        case failed(next: Int64, error: String)
    }

    private func work(_ target: String) async {
        var unsaved: [String: (note: PendingNotification, state: Unsaved)] = [:]
        var warned = false
        while !stopping.withLock({ $0 }) && !Task.isCancelled {
            for (key, entry) in unsaved {
                do {
                    try await save(entry.note, entry.state)
                    unsaved[key] = nil
                } catch {
                    break
                }
            }
            let now = Self.nowMillis()
            let due: [PendingNotification]
            do {
                due = try await database.dueNotifications(target: target, nowMillis: now, limit: 16)
                    .filter { unsaved[$0.fileID] == nil }
            } catch {
                due = []
                if !warned { logger.warning("notification queue cannot be read", metadata: ["error": "\(error)"]) }
                warned = true
            }
            for note in due {
                if stopping.withLock({ $0 }) { return }
                guard let state = await deliver(note) else { return }
                do {
                    try await save(note, state)
                    warned = false
                } catch {
                    unsaved[note.fileID] = (note, state)
                    if !warned {
                        logger.warning(
                            "notification queue cannot be written: what was delivered is kept in memory until it can",
                            metadata: ["error": "\(error)", "notify.target": "\(target)"]
                        )
                    }
                    warned = true
                }
            }
            if due.isEmpty {
                // New verdicts are looked for four times a second; a retry is waited for no longer.
                let next = (try? await database.nextNotificationDue(target: target)) ?? nil
                let wait = min(250, max(10, (next ?? Int64.max) - Self.nowMillis()))
                try? await Task.sleep(for: .milliseconds(wait))
            }
        }
    }

    private func save(_ note: PendingNotification, _ state: Unsaved) async throws {
        switch state {
        case .delivered: try await database.notificationDelivered(note)
        case .failed(let next, let error):
            try await database.notificationFailed(note, nextMillis: next, error: error)
        }
    }

    /// Delivers `note` once; nil when abandoned because the daemon is stopping.
    private func deliver(_ note: PendingNotification) async -> Unsaved? {
        let attempt = note.attempts + 1
        let body = document(note, attempt: attempt)
        let configuration = self.configuration
        let environment = self.environment(note, attempt: attempt)
        let cancelled: @Sendable () -> Bool = { [self] in stopping.withLock { $0 } }
        let queue = note.target == "command" ? commandQueue : webhookQueue
        let result: Delivery = await withCheckedContinuation { continuation in
            queue.async {
                switch note.target {
                case "command":
                    guard let command = configuration.command else {
                        return continuation.resume(returning: .failed("no command configured"))
                    }
                    continuation.resume(
                        returning: Hook.run(
                            command,
                            environment: environment,
                            input: body,
                            timeout: configuration.timeout,
                            cancelled: cancelled
                        )
                    )
                default:
                    guard let webhook = configuration.webhook else {
                        return continuation.resume(returning: .failed("no url configured"))
                    }
                    let timestamp = String(Self.nowMillis() / 1_000)
                    let signature = StandardWebhooks.signature(
                        id: note.fileID,
                        timestamp: timestamp,
                        body: body,
                        key: webhook.key
                    )
                    continuation.resume(
                        returning: HTTPPost.post(
                            host: webhook.host,
                            port: webhook.port,
                            path: webhook.path,
                            headers: [
                                ("Content-Type", "application/json"), ("webhook-id", note.fileID),
                                ("webhook-timestamp", timestamp), ("webhook-signature", signature),
                                ("User-Agent", "carespool"),
                            ],
                            body: body,
                            timeout: configuration.timeout,
                            cancelled: cancelled
                        )
                    )
                }
            }
        }
        var metadata: Logger.Metadata = [
            "file.id": "\(note.fileID)", "notify.target": "\(note.target)", "notify.attempt": "\(attempt)",
        ]
        switch result {
        case .cancelled:
            logger.notice(
                "notification abandoned: the daemon is stopping; it is made again at the next start",
                metadata: metadata
            )
            return nil
        case .failed(let failure):
            let delay = retryDelay(afterAttempt: attempt)
            metadata["notify.error"] = "\(failure)"
            metadata["notify.retry_s"] = "\(Double(delay) / 1_000)"
            metadata["message_id"] = "\(Self.undeliveredMessageID)"
            logger.warning("notification not delivered", metadata: metadata)
            Counter(
                label: "carespool_notifications_total",
                dimensions: [("target", note.target), ("result", "failed")]
            )
            .increment()
            return .failed(next: Self.nowMillis() + delay, error: failure)
        case .delivered:
            logger.info("notification delivered", metadata: metadata)
            Counter(
                label: "carespool_notifications_total",
                dimensions: [("target", note.target), ("result", "delivered")]
            )
            .increment()
            return .delivered
        }
    }

    /// Milliseconds before the attempt after `attempt`: the initial delay doubled each time, at most the
    /// ceiling.
    func retryDelay(afterAttempt attempt: Int) -> Int64 {
        let initial = Self.millis(configuration.retryInitial)
        let ceiling = Self.millis(configuration.retryMax)
        let shift = min(attempt - 1, 40)
        let (scaled, overflow) = initial.multipliedReportingOverflow(by: Int64(1) << shift)
        return overflow ? ceiling : min(scaled, ceiling)
    }

    /// The JSON document: ids, kind, outcome, counts — never a field value; the name only if enabled.
    func document(_ note: PendingNotification, attempt: Int) -> [UInt8] {
        var text = "{\"type\":\"carespool.file.finished\",\"id\":\(JSONValue.quoted(note.fileID))"
        text += ",\"file_id\":\(JSONValue.quoted(note.fileID)),\"kind\":\(JSONValue.quoted(note.kind))"
        text += ",\"outcome\":\(JSONValue.quoted(note.outcome))"
        text +=
            ",\"counts\":{\"stored\":\(note.stored),\"duplicates\":\(note.duplicates),\"rejected\":\(note.rejected)}"
        text +=
            ",\"finished_at\":\(JSONValue.quoted(note.finishedAt)),\"host\":\(JSONValue.quoted(host)),\"attempt\":\(attempt)"
        if configuration.includeName { text += ",\"file_name\":\(JSONValue.quoted(note.originalName))" }
        text += ",\"show\":\(JSONValue.quoted("carespool show " + note.fileID))}\n"
        return Array(text.utf8)
    }

    /// The hook's whole environment (nothing of the daemon's own: no credentials directory, no secrets).
    func environment(_ note: PendingNotification, attempt: Int) -> [String: String] {
        var values = [
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            "CARESPOOL_EVENT": "file.finished",
            "CARESPOOL_FILE_ID": note.fileID,
            "CARESPOOL_KIND": note.kind,
            "CARESPOOL_OUTCOME": note.outcome,
            "CARESPOOL_STORED": String(note.stored),
            "CARESPOOL_DUPLICATES": String(note.duplicates),
            "CARESPOOL_REJECTED": String(note.rejected),
            "CARESPOOL_FINISHED_AT": note.finishedAt,
            "CARESPOOL_HOST": host,
            "CARESPOOL_ATTEMPT": String(attempt),
        ]
        // A name with a NUL cannot be in an environment; such a name is left out.
        if configuration.includeName && !note.originalName.utf8.contains(0) {
            values["CARESPOOL_FILE_NAME"] = note.originalName
        }
        return values
    }

    static func nowMillis() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000 + Int64(now.tv_nsec) / 1_000_000
    }

    static func millis(_ duration: Duration) -> Int64 {
        duration.components.seconds * 1_000 + duration.components.attoseconds / 1_000_000_000_000_000
    }
}

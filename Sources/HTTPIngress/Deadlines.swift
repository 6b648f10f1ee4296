import Dispatch
import Foundation
import Spool
import Synchronization

/// Deadlines for many tasks, kept by one thread of its own. A request's body timeout used to be a
/// second child task sleeping beside the one reading (`Task.sleep`: a timer of its own per request),
/// which cost 12–30% of the endpoint's rate where syncs are cheap (tmpfs). Here a deadline is an entry
/// in a table that one thread sweeps when the earliest is due, cancelling the tasks whose time is up.
package final class Deadlines: Sendable {
    package static let shared = Deadlines()

    /// The task that runs under a deadline. Only cancelled, under the table's lock, while it is in the
    /// table: the task takes itself out (under the same lock) before it returns.
    private struct Entry: @unchecked Sendable {
        var deadline: Int64
        var task: UnsafeCurrentTask
    }

    private struct Table: ~Copyable {
        var next: UInt64 = 0
        var entries: [UInt64: Entry] = [:]
        /// Entries cancelled because their deadline passed, until their task takes them out.
        var expired: Set<UInt64> = []
        /// When the sweeper will next look; nil: not before it is woken.
        var sweepAt: Int64?
    }

    private let table = Mutex(Table())
    private let wake = DispatchSemaphore(value: 0)

    package init() {
        let thread = Thread { [self] in sweep() }
        thread.name = "carespool.deadlines"
        thread.start()
    }

    /// Runs `work` in the current task, which is cancelled if `work` has not returned by `deadline`
    /// (``Clock/monotonicNanos()``; swept at most a millisecond or so late). Returns `work`'s result,
    /// or nil when the deadline passed first, whatever `work` returned or threw after its cancellation.
    package func run<T>(until deadline: Int64, _ work: () async throws -> T) async throws -> T? {
        let (id, earlier) = withUnsafeCurrentTask { task -> (UInt64, Bool) in
            guard let task else { preconditionFailure("Deadlines.run outside a task") }
            return table.withLock { table -> (UInt64, Bool) in
                table.next += 1
                table.entries[table.next] = Entry(deadline: deadline, task: task)
                // The sweeper sleeps towards a later deadline, or until woken: wake it, once.
                guard table.sweepAt.map({ deadline < $0 }) ?? true else { return (table.next, false) }
                table.sweepAt = deadline
                return (table.next, true)
            }
        }
        if earlier { wake.signal() }
        let result: Result<T, any Error>
        do {
            result = .success(try await work())
        } catch {
            result = .failure(error)
        }
        let expired = table.withLock { table -> Bool in
            table.entries[id] = nil
            return table.expired.remove(id) != nil
        }
        if expired { return nil }
        return try result.get()
    }

    /// The sweeper: cancels every task whose deadline has passed, then sleeps until the earliest
    /// remaining one, or until a task with an earlier deadline wakes it.
    private func sweep() {
        while true {
            let now = Clock.monotonicNanos()
            let earliest = table.withLock { table -> Int64? in
                var earliest: Int64?
                for (id, entry) in table.entries where !table.expired.contains(id) {
                    if entry.deadline <= now {
                        // Under the lock: the task cannot have returned (it takes its entry out first).
                        table.expired.insert(id)
                        entry.task.cancel()
                    } else {
                        earliest = min(earliest ?? entry.deadline, entry.deadline)
                    }
                }
                table.sweepAt = earliest
                return earliest
            }
            guard let earliest else {
                wake.wait()
                continue
            }
            _ = wake.wait(timeout: .now() + .nanoseconds(Int(max(1_000_000, earliest - now))))
        }
    }
}

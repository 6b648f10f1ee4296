import HTTPIngress
import Spool
import Testing

/// The request bodies' deadlines: one sweeping thread cancels the tasks whose time is up, and only those.
/// Work under a deadline runs in a child task, as the endpoint's body reads do: cancelling a test's own
/// task would cancel the test.
@Suite struct DeadlinesTests {
    /// Milliseconds since `start` by the monotonic clock.
    static func millis(since start: Int64) -> Int64 { (Clock.monotonicNanos() - start) / 1_000_000 }

    @Test func workOutlivingItsDeadlineIsCancelledThenAndAnswersNil() async throws {
        let deadlines = Deadlines()
        let start = Clock.monotonicNanos()
        async let result = deadlines.run(until: start + 200_000_000) {
            try await Task.sleep(for: .seconds(30))
            return "finished"
        }
        #expect(try await result == nil)
        let elapsed = Self.millis(since: start)
        #expect(elapsed >= 200)
        // Cancelled, not slept out (generous: a starved machine may sweep late, never 30 s late).
        #expect(elapsed < 20_000)
    }

    @Test func workFinishingInTimeKeepsItsResultAndItsTaskIsNeverCancelledLater() async throws {
        let deadlines = Deadlines()
        let outcome = try await Task {
            let result = try await deadlines.run(until: Clock.monotonicNanos() + 300_000_000) { 42 }
            // Past the deadline, the task that ran under it is not cancelled after the fact.
            try? await Task.sleep(for: .milliseconds(600))
            return (result, Task.isCancelled)
        }.value
        #expect(outcome.0 == 42)
        #expect(outcome.1 == false)
    }

    @Test func anErrorBeforeTheDeadlineIsThrownAsItIs() async throws {
        struct Refused: Error {}
        let deadlines = Deadlines()
        await #expect(throws: Refused.self) {
            _ = try await deadlines.run(until: Clock.monotonicNanos() + 10_000_000_000) { () throws -> Int in
                throw Refused()
            }
        }
    }

    @Test func anEarlierDeadlineWakesASweeperSleepingTowardsALaterOne() async throws {
        let deadlines = Deadlines()
        let start = Clock.monotonicNanos()
        let late = Task {
            try await deadlines.run(until: start + 60_000_000_000) {
                try await Task.sleep(for: .seconds(120))
                return 1
            }
        }
        // Registered after the late one, while the sweeper sleeps towards it.
        try await Task.sleep(for: .milliseconds(100))
        async let early = deadlines.run(until: Clock.monotonicNanos() + 100_000_000) {
            try await Task.sleep(for: .seconds(120))
            return 2
        }
        #expect(try await early == nil)
        #expect(Self.millis(since: start) < 30_000)
        // Cancelled by its owner before its deadline: an error of its own, not a deadline's nil.
        late.cancel()
        await #expect(throws: CancellationError.self) { try await late.value }
    }

    @Test func manyTasksEachCancelledAtItsOwnDeadlineAndNoOther() async throws {
        let deadlines = Deadlines()
        let outcomes = try await withThrowingTaskGroup(of: (index: Int, result: Int?, millis: Int64).self) { group in
            for index in 0..<200 {
                group.addTask {
                    let start = Clock.monotonicNanos()
                    // Even: cut off after 50–249 ms. Odd: a far deadline, done at once.
                    let limit: Int64 = index % 2 == 0 ? Int64(50 + index) : 60_000
                    let result = try await deadlines.run(until: start + limit * 1_000_000) { () async throws -> Int in
                        if index % 2 == 0 { try await Task.sleep(for: .seconds(120)) }
                        return index
                    }
                    return (index, result, Self.millis(since: start))
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(outcomes.count == 200)
        for outcome in outcomes {
            if outcome.index % 2 == 0 {
                #expect(outcome.result == nil)
                #expect(outcome.millis >= Int64(50 + outcome.index))
            } else {
                #expect(outcome.result == outcome.index)
            }
        }
    }
}

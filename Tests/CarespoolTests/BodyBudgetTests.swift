import HTTPIngress
import Testing

/// The door's memory: what bodies it holds at once, in two pools, so that senders who have not proved who
/// they are cannot take what proven ones need (found live: 40 slow unsigned Zoom bodies kept a bearer
/// token's `/ingest` at 503 for minutes when both shared one pool).
@Suite struct BodyBudgetTests {
    @Test func unverifiedBodiesNeverTakeWhatVerifiedSendersNeed() {
        let budget = BodyBudget(share: 64 << 20)
        #expect(budget.verified == 64 << 20 && budget.unverified == 32 << 20 && budget.perAddress == 4 << 20)
        // Many unverified senders, from many addresses, fill their pool…
        var attackers: [BodyBudget.Holding] = []
        for n in 0..<100 {
            let holding = budget.holding(unverifiedFrom: "10.0.0.\(n)")
            if holding.take(1 << 20) { attackers.append(holding) }
        }
        #expect(attackers.count == 32, "the unverified pool holds 32 MiB")
        #expect(!budget.holding(unverifiedFrom: "10.0.1.1").take(1), "then it is full")
        // …and a verified sender still gets its whole route limit.
        let verified = budget.holding(unverifiedFrom: nil)
        #expect(verified.take(64 << 20))
        #expect(!budget.holding(unverifiedFrom: nil).take(1), "the verified pool is full in turn")
        verified.release()
        #expect(budget.holding(unverifiedFrom: nil).take(1 << 20))
        for holding in attackers { holding.release() }
        #expect(budget.current == 1 << 20)
    }

    @Test func oneAddressHoldsAtMostASixteenthOfTheShare() {
        let budget = BodyBudget(share: 64 << 20)
        let first = budget.holding(unverifiedFrom: "192.0.2.7")
        #expect(first.take(3 << 20))
        let second = budget.holding(unverifiedFrom: "192.0.2.7")
        #expect(second.take(1 << 20))
        #expect(!second.take(1), "4 MiB from one address")
        #expect(budget.holding(unverifiedFrom: "192.0.2.8").take(4 << 20), "another address has its own")
        first.release()
        #expect(second.take(3 << 20))
        // A request's limit never exceeds what its pool lets one request hold: it always fits alone.
        #expect(budget.limit(verifiedFirst: false) == 4 << 20)
        #expect(budget.limit(verifiedFirst: true) == 64 << 20)
        second.release()
        second.release()  // twice is harmless
        #expect(budget.current == 4 << 20)
    }
}

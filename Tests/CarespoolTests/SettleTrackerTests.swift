import Pipeline
import Spool
import Testing

/// The settle / open-hold state machine on its own: no file system, entries and clocks made up.
@Suite struct SettleTrackerTests {
    static let second: Int64 = 1_000_000_000
    static let folder = "/spool/inbox/intake"

    static func entry(_ bytes: [UInt8], size: Int64 = 10, mtime: Int64 = 0, inode: UInt64 = 1) -> Spool.Entry {
        Spool.Entry(
            name: SpoolName.display(bytes),
            bytes: bytes,
            type: .regular,
            size: size,
            mtime: mtime,
            inode: inode
        )
    }

    func scan(_ tracker: inout SettleTracker, _ entries: [Spool.Entry], at now: Int64) -> [[UInt8]] {
        tracker.scan(folder: Self.folder, entries: entries, now: now, wallNow: 0, fullEntry: { $0 }).ready.map(\.bytes)
    }

    /// "é" as one scalar (NFC) and as "e" + combining acute (NFD): equal as Swift Strings, two files on disk.
    @Test func canonicallyEquivalentNamesAreTwoEntriesAndBothBecomeReady() {
        let nfc = Array("caf\u{E9}.csv".utf8)
        let nfd = Array("cafe\u{301}.csv".utf8)
        #expect("caf\u{E9}.csv" == "cafe\u{301}.csv")  // why a String key is wrong
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let entries = [Self.entry(nfc, inode: 1), Self.entry(nfd, inode: 2)]
        #expect(scan(&tracker, entries, at: 0).isEmpty)
        #expect(Set(scan(&tracker, entries, at: 3 * Self.second)) == [nfc, nfd])
    }

    @Test func completeByInotifyIsReadyAtOnceUnlessHeldOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let nfc = Array("caf\u{E9}.csv".utf8)
        let nfd = Array("cafe\u{301}.csv".utf8)
        let keyNFC = SettleTracker.key(folder: Self.folder, name: nfc)
        let keyNFD = SettleTracker.key(folder: Self.folder, name: nfd)
        // One closed, its canonically equivalent twin still open: only the closed one is ready.
        tracker.absorb(complete: [keyNFC], opened: [keyNFD: 1], overflow: false)
        let ready = scan(&tracker, [Self.entry(nfc, inode: 1), Self.entry(nfd, inode: 2)], at: 0)
        #expect(ready == [nfc])
    }

    @Test func aFileSettlesOnlyOnceItsSizeMtimeAndInodeHoldStill() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let name = Array("a.json".utf8)
        #expect(scan(&tracker, [Self.entry(name, size: 1)], at: 0).isEmpty)
        #expect(scan(&tracker, [Self.entry(name, size: 2)], at: 1 * Self.second).isEmpty)  // grew
        #expect(scan(&tracker, [Self.entry(name, size: 2)], at: 2 * Self.second).isEmpty)  // 1 s still
        #expect(scan(&tracker, [Self.entry(name, size: 2, inode: 9)], at: 3 * Self.second).isEmpty)  // replaced
        #expect(scan(&tracker, [Self.entry(name, size: 2, inode: 9)], at: 5 * Self.second) == [name])
    }

    @Test func aFileHeldOpenWaitsForItsCloseButNotForEver() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second)
        let name = Array("upload.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(complete: [], opened: [key: 1], overflow: false)
        var events: [SettleTracker.Event] = []
        for second in [0, 3, 6, 9] as [Int64] {
            let result = tracker.scan(
                folder: Self.folder,
                entries: [Self.entry(name)],
                now: second * Self.second,
                wallNow: 0,
                fullEntry: { $0 }
            )
            #expect(result.ready.isEmpty, "claimed at \(second) s while open")
            events += result.events
        }
        #expect(events == [.heldOpen(key)], "said once")
        let late = tracker.scan(
            folder: Self.folder,
            entries: [Self.entry(name)],
            now: 10 * Self.second,
            wallNow: 0,
            fullEntry: { $0 }
        )
        #expect(late.ready.map(\.bytes) == [name])
        #expect(late.events == [.claimedWhileOpen(key, held: 10 * Self.second)])
    }

    @Test func anOverflowForgetsOpenCountsAndVanishedEntriesAreForgotten() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let name = Array("a.json".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(complete: [key], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0).isEmpty)
        tracker.absorb(complete: [], opened: [:], overflow: true)
        #expect(scan(&tracker, [Self.entry(name)], at: 0) == [name])
        // Gone from the folder: nothing of it is kept.
        _ = scan(&tracker, [], at: 1)
        #expect(tracker.foldersToRevisit.isEmpty)
    }

    @Test func anEntryOfAFolderBelowIsNotForgottenByTheFolderAbove() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let below = Self.folder + "/partner"
        let name = Array("a.json".utf8)
        _ = tracker.scan(folder: below, entries: [Self.entry(name)], now: 0, wallNow: 0, fullEntry: { $0 })
        _ = scan(&tracker, [], at: 1)  // the folder above, empty
        let ready = tracker.scan(
            folder: below,
            entries: [Self.entry(name)],
            now: 3 * Self.second,
            wallNow: 0,
            fullEntry: { $0 }
        )
        #expect(ready.ready.map(\.bytes) == [name])
    }

    @Test func notRegularEntriesAreReadyAtOnce() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        var directory = Self.entry(Array("folder".utf8))
        directory.type = .directory
        #expect(scan(&tracker, [directory], at: 0) == [Array("folder".utf8)])
    }
}

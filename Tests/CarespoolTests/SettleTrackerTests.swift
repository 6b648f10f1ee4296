import Pipeline
import Spool
import Testing

/// The settle / open-hold state machine on its own: no file system, entries and clocks made up.
@Suite struct SettleTrackerTests {
    static let second: Int64 = 1_000_000_000
    static let folder = "/spool/inbox/intake"

    static func entry(
        _ bytes: [UInt8],
        size: Int64 = 10,
        mtime: Int64 = 0,
        inode: UInt64 = 1,
        ctime: Int64 = 0
    ) -> Spool.Entry {
        Spool.Entry(
            name: SpoolName.display(bytes),
            bytes: bytes,
            type: .regular,
            size: size,
            mtime: mtime,
            inode: inode,
            ctime: ctime
        )
    }

    func scan(
        _ tracker: inout SettleTracker,
        _ entries: [Spool.Entry],
        at now: Int64,
        wallNow: Int64 = 0,
        arrival: Spool.Arrival = .close
    ) -> [[UInt8]] {
        tracker.scan(
            folder: Self.folder,
            arrival: arrival,
            entries: entries,
            now: now,
            wallNow: wallNow,
            fullEntry: { $0 }
        ).ready.map(\.bytes)
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

    @Test func renamedInIsReadyAtOnceUnlessHeldOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second)
        let nfc = Array("caf\u{E9}.csv".utf8)
        let nfd = Array("cafe\u{301}.csv".utf8)
        let keyNFC = SettleTracker.key(folder: Self.folder, name: nfc)
        let keyNFD = SettleTracker.key(folder: Self.folder, name: nfd)
        // One closed, its canonically equivalent twin still open: only the closed one is ready.
        tracker.absorb(arrivals: [keyNFC: .renamed], opened: [keyNFD: 1], overflow: false)
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
        tracker.absorb(opened: [key: 1], overflow: false)
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
        tracker.absorb(arrivals: [key: .renamed], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0).isEmpty)
        tracker.absorb(opened: [:], overflow: true)
        #expect(scan(&tracker, [Self.entry(name)], at: 0) == [name])
        // Gone from the folder: nothing of it is kept.
        _ = scan(&tracker, [], at: 1)
        #expect(tracker.foldersToRevisit(now: .max).isEmpty)
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

    // MARK: Written in place: the close grace (issue 21, point 1)

    /// `rsync -a --inplace` closes the file, then sets its times and mode by name: claimed before that,
    /// rsync ends with status 23. A file written in place waits for the grace, by our clock, and every
    /// change (here rsync's utimes, which puts the mtime years back) starts the grace again.
    @Test func aFileWrittenInPlaceWaitsForTheCloseGraceAndEachChangeRestartsIt() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: Self.second)
        let name = Array("visits.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        let wall: Int64 = 1_000_000 * Self.second
        tracker.absorb(arrivals: [key: .closed], opened: [key: 0], overflow: false)
        let written = Self.entry(name, mtime: wall, ctime: wall)
        #expect(scan(&tracker, [written], at: 0, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [written], at: Self.second / 2, wallNow: wall).isEmpty)
        // rsync sets the sender's mtime (long ago) and the mode: the mtime's age is no reason to claim.
        let timed = Self.entry(name, mtime: 5, ctime: wall + Self.second / 2)
        #expect(scan(&tracker, [timed], at: Self.second * 6 / 10, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [timed], at: Self.second * 15 / 10, wallNow: wall).isEmpty)
        #expect(scan(&tracker, [timed], at: Self.second * 16 / 10, wallNow: wall) == [name])
    }

    /// Found by the hostile review: a file kept open for 3 s, then closed, was claimed at once (the grace
    /// had run while it was open) and its writer's utimes 50 ms later failed. The grace starts at the close.
    @Test func theCloseGraceStartsAtTheCloseNotWhileTheFileWasOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: Self.second)
        let name = Array("slow.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(arrivals: [key: .created], opened: [key: 1], overflow: false)
        let entry = Self.entry(name)
        #expect(scan(&tracker, [entry], at: 0).isEmpty)
        #expect(scan(&tracker, [entry], at: 3 * Self.second).isEmpty, "open")
        tracker.absorb(arrivals: [key: .closed], opened: [key: -1], overflow: false)
        #expect(scan(&tracker, [entry], at: 3 * Self.second + 1).isEmpty, "just closed")
        #expect(scan(&tracker, [entry], at: 3 * Self.second + Self.second / 2).isEmpty)
        #expect(scan(&tracker, [entry], at: 4 * Self.second + 1) == [name])
    }

    @Test func withNoGraceAFileWrittenInPlaceIsReadyOnceClosed() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: 0)
        let name = Array("a.json".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(arrivals: [key: .closed], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0).isEmpty, "still open")
        tracker.absorb(opened: [key: -1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 1) == [name])
    }

    /// A folder is looked at again only when one of its waiting entries is due: a file held open for ten
    /// minutes costs two looks (the settle interval's log line, the open hold), not one every tick.
    @Test func aFolderIsRevisitedOnlyWhenAnEntryIsDue() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 600 * Self.second, closeGrace: Self.second)
        let name = Array("held.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(arrivals: [key: .created], opened: [key: 1], overflow: false)
        _ = scan(&tracker, [Self.entry(name)], at: 0)
        #expect(tracker.foldersToRevisit(now: Self.second).isEmpty)
        #expect(tracker.foldersToRevisit(now: 2 * Self.second) == [Array(Self.folder.utf8)])
        _ = scan(&tracker, [Self.entry(name)], at: 2 * Self.second)
        #expect(tracker.foldersToRevisit(now: 599 * Self.second).isEmpty)
        #expect(tracker.foldersToRevisit(now: 600 * Self.second) == [Array(Self.folder.utf8)])
    }

    // MARK: arrival = "rename" (issue 21, point 2)

    @Test func aRenameOnlyInboxNeverTakesAFileWrittenInPlaceAndSaysSoOnce() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let name = Array("upload.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        // An SFTP upload killed mid-put: sshd closed the half file under its final name.
        tracker.absorb(arrivals: [key: .closed], opened: [key: 0], overflow: false)
        var events: [SettleTracker.Event] = []
        for second in [0, 5, 60, 3_600] as [Int64] {
            let result = tracker.scan(
                folder: Self.folder,
                arrival: .rename,
                entries: [Self.entry(name)],
                now: second * Self.second,
                wallNow: second * Self.second,
                fullEntry: { $0 }
            )
            #expect(result.ready.isEmpty, "claimed at \(second) s")
            events += result.events
        }
        #expect(events == [.writtenInPlace(key)])
        #expect(tracker.foldersToRevisit(now: .max).isEmpty, "not looked at every wake-up")
        #expect(tracker.inPlaceRecords().map(\.stamp) == [SettleTracker.Stamp(Self.entry(name))])
        // The same inbox takes the re-send the moment it is renamed in.
        let final = Array("upload.final.csv".utf8)
        tracker.absorb(
            arrivals: [SettleTracker.key(folder: Self.folder, name: final): .renamed],
            opened: [:],
            overflow: false
        )
        let both = [Self.entry(name), Self.entry(final, inode: 2)]
        #expect(scan(&tracker, both, at: 3_601 * Self.second, arrival: .rename) == [final])
    }

    /// Found by the hostile review: renamed in, then opened and rewritten in place (a half line) — the
    /// rename won over the later write-close, and the half file was claimed. The last event decides.
    @Test func aFileRenamedInThenRewrittenInPlaceWasWrittenInPlace() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let name = Array("q.csv".utf8)
        let key = SettleTracker.key(folder: Self.folder, name: name)
        tracker.absorb(arrivals: [key: .renamed], opened: [key: 1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 0, arrival: .rename).isEmpty, "open")
        tracker.absorb(arrivals: [key: .closed], opened: [key: -1], overflow: false)
        #expect(scan(&tracker, [Self.entry(name)], at: 60 * Self.second, arrival: .rename).isEmpty)
        // In an ordinary inbox the same file waits for the close grace.
        var ordinary = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        ordinary.absorb(arrivals: [key: .renamed], opened: [:], overflow: false)
        ordinary.absorb(arrivals: [key: .closed], opened: [:], overflow: false)
        #expect(scan(&ordinary, [Self.entry(name)], at: 0).isEmpty)
        #expect(scan(&ordinary, [Self.entry(name)], at: Self.second) == [name])
    }

    /// OpenSSH's sftp-server renames with link() and unlink(): a create, no open, no write-close.
    @Test func aRenameOnlyInboxTakesALinkAfterTheGraceButNotACreateStillOpen() {
        var tracker = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let linked = Array("linked.csv".utf8)
        let writing = Array("writing.csv".utf8)
        let linkedKey = SettleTracker.key(folder: Self.folder, name: linked)
        let writingKey = SettleTracker.key(folder: Self.folder, name: writing)
        tracker.absorb(arrivals: [linkedKey: .created, writingKey: .created], opened: [writingKey: 1], overflow: false)
        let entries = [Self.entry(linked, inode: 1), Self.entry(writing, inode: 2)]
        #expect(scan(&tracker, entries, at: 0, arrival: .rename).isEmpty)
        #expect(scan(&tracker, entries, at: Self.second, arrival: .rename) == [linked])
        // A writer that holds its file open under its final name is never overtaken, however long, and
        // its folder is not looked at for it every tick.
        #expect(scan(&tracker, [entries[1]], at: 3_600 * Self.second, arrival: .rename).isEmpty)
        #expect(tracker.foldersToRevisit(now: .max).isEmpty)
        // After an overflow a create may have lost its write-close and open counts are gone: the file
        // settles as one of unknown arrival (the documented limit of an overflow).
        tracker.absorb(opened: [:], overflow: true)
        #expect(scan(&tracker, [entries[1]], at: 3_601 * Self.second, arrival: .rename).isEmpty)
        #expect(scan(&tracker, [entries[1]], at: 3_604 * Self.second, arrival: .rename) == [writing])
    }

    /// Found by the hostile review: after a restart, files renamed in while the daemon was down waited for
    /// ever (ctime equal to mtime at coarse timestamps). Files left in place are remembered by inode, size
    /// and times instead; anything else found after a restart settles as in any inbox.
    @Test func aRestartLeavesTheRememberedInPlaceFilesAndTakesTheRest() {
        var before = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        let killed = Array("killed.csv".utf8)
        let rewritten = Array("resumed.csv".utf8)
        let renamed = Array("renamed-while-down.csv".utf8)
        let killedEntry = Self.entry(killed, size: 100, mtime: 50, inode: 1, ctime: 50)
        let rewrittenBefore = Self.entry(rewritten, size: 100, mtime: 50, inode: 2, ctime: 50)
        before.absorb(
            arrivals: [
                SettleTracker.key(folder: Self.folder, name: killed): .closed,
                SettleTracker.key(folder: Self.folder, name: rewritten): .closed,
            ],
            opened: [:],
            overflow: false
        )
        _ = scan(&before, [killedEntry, rewrittenBefore], at: 0, arrival: .rename)
        let remembered = Set(before.inPlaceRecords().map(\.stamp))
        #expect(remembered.count == 2)

        var after = SettleTracker(settle: 2 * Self.second, openHold: 10 * Self.second, closeGrace: Self.second)
        after.restoreInPlace(folder: Self.folder, stamps: remembered)
        let entries = [
            killedEntry,
            Self.entry(rewritten, size: 300, mtime: 90, inode: 2, ctime: 90),  // completed while down
            Self.entry(renamed, size: 10, mtime: 80, inode: 3, ctime: 80),
        ]
        let wall = 100 * Self.second
        let first = after.scan(
            folder: Self.folder,
            arrival: .rename,
            entries: entries,
            now: 0,
            wallNow: wall,
            fullEntry: { $0 }
        )
        #expect(
            first.ready.isEmpty
                && first.events == [.writtenInPlace(SettleTracker.key(folder: Self.folder, name: killed))]
        )
        #expect(Set(scan(&after, entries, at: 1, wallNow: wall, arrival: .rename)) == [rewritten, renamed])
    }
}

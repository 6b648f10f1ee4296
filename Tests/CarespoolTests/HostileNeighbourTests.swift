import Dispatch
import Foundation
import GRDB
import Spool
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// docs/SECURITY.md tried for real: the daemon runs as an unprivileged user of its own, two partners and
/// an operator are real Unix users (made here: the tests run as root), each acts as itself through
/// setpriv(1), and the spool is laid out as the shipped tmpfiles lay it out.
@Suite(.serialized) struct HostileNeighbourTests {
    static let daemonUser = "csp-daemon"
    static let operatorsGroup = "csp-ops"
    static let partnerA = "csp-pa"
    static let partnerB = "csp-pb"
    static let operatorUser = "csp-op"

    /// Runs `arguments` (a full path first) to its end: exit status, stdout, stderr.
    @discardableResult
    static func run(_ arguments: [String]) async throws -> (status: TerminationStatus, out: String, err: String) {
        let result = try await Subprocess.run(
            .path(FilePath(arguments[0])),
            arguments: Arguments(Array(arguments.dropFirst())),
            environment: Daemon.environment,
            output: .string(limit: 16 << 20),
            error: .string(limit: 16 << 20)
        )
        return (result.terminationStatus, result.standardOutput ?? "", result.standardError ?? "")
    }

    static func sh(_ script: String) async throws -> Bool {
        try await run(["/bin/sh", "-c", script]).status == .exited(0)
    }

    /// `script` run by /bin/sh as `user` (its own groups, or `group` as its primary one).
    static func shAs(_ user: String, group: String? = nil, _ script: String) async throws -> Bool {
        let arguments = [
            "/usr/bin/setpriv", "--reuid=" + user, "--regid=" + (group ?? user), "--init-groups", "/bin/sh", "-c",
            script,
        ]
        return try await run(arguments).status == .exited(0)
    }

    /// The users and groups of the threat model, made once (idempotent).
    static func makeUsers() async throws {
        let script = """
            set -e
            getent group \(operatorsGroup) >/dev/null || groupadd --system \(operatorsGroup)
            for u in \(daemonUser) \(partnerA) \(partnerB); do
              id -u $u >/dev/null 2>&1 || useradd --system --user-group --no-create-home --shell /usr/sbin/nologin $u
            done
            id -u \(operatorUser) >/dev/null 2>&1 || \
              useradd --system --no-create-home --shell /usr/sbin/nologin --gid \(operatorsGroup) \(operatorUser)
            usermod -aG \(partnerA),\(partnerB) \(daemonUser)
            """
        #expect(try await sh(script), "creating the test users")
    }

    static func ids(_ name: String) -> (uid: uid_t, gid: gid_t) {
        let user = getpwnam(name)!
        return (user.pointee.pw_uid, user.pointee.pw_gid)
    }

    /// A file named `bytes` in `folder`, owned by `owner` (its group the folder's), mode `mode`.
    static func plant(_ folder: String, _ bytes: [UInt8], _ text: String, owner: String, mode: mode_t = 0o660) {
        let path = (Array(folder.utf8) + [0x2F] + bytes).map { CChar(bitPattern: $0) } + [0]
        let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
        #expect(fd >= 0, "plant \(SpoolName.display(bytes))")
        _ = text.withCString { write(fd, $0, strlen($0)) }
        close(fd)
        chown(path, ids(owner).uid, fileInfo(folder)?.gid ?? 0)
        chmod(path, mode)
    }

    @Test func partnersSeeOnlyTheirOwnInboxAndNoNameLinkOrEntryMisleadsTheDaemon() async throws {
        #expect(getuid() == 0, "this test acts as several users: it must run as root, as make test does")
        try await Self.makeUsers()
        let dir = TempDir("neighbours")
        defer { dir.cleanup() }
        chmod(dir.path, 0o755)
        let spool = dir.path + "/spool"
        let a = spool + "/partners/a"
        let b = spool + "/partners/b"
        let canary = HostileSpoolTests.Canary(dir)
        // The layout as systemd/carespool.tmpfiles makes it, with the partners' folders as OPERATIONS.md
        // says to make them; and symlinks planted where the daemon once wrote fixed names.
        let d = Self.daemonUser
        let ops = Self.operatorsGroup
        #expect(
            try await Self.sh(
                """
                set -e
                install -d -o \(d) -g \(ops) -m 2751 \(spool)
                install -d -o \(d) -g \(ops) -m 0700 \(spool)/tmp \(spool)/processing
                install -d -o \(d) -g \(ops) -m 0711 \(spool)/partners
                install -d -o \(d) -g \(Self.partnerA) -m 2770 \(a)
                install -d -o \(d) -g \(Self.partnerB) -m 2770 \(b)
                for name in tmp/.retrying.json processing/retrying.json processing/.crashed tmp/.drop-x.json; do
                  ln -s \(canary.path) \(spool)/$name; chown -h \(d):\(ops) \(spool)/$name
                done
                """
            )
        )
        let config = dir.path + "/carespool.toml"
        try """
        [[inbox]]
        path = "\(a)"
        kind = "appointments"

        [[inbox]]
        path = "\(b)"
        kind = "intake"
        """.write(toFile: config, atomically: true, encoding: .utf8)
        chmod(config, 0o644)

        let nfc = Array("caf\u{E9}.json".utf8)
        let nfd = Array("cafe\u{301}.json".utf8)
        let notUTF8 = [UInt8](repeating: 0xFE, count: 90)
        let long = Array((String(repeating: "é", count: 120) + "-visits.json").utf8)
        let control = Array("evil\u{1B}]0;owned\u{7}\n| fake | row |.json".utf8)
        let named = [nfc, nfd, notUTF8, long, control]
        let arguments = [
            "/usr/bin/setpriv", "--reuid=" + d, "--regid=" + ops, "--init-groups", Daemon.binary, "serve", "--config",
            config, "--spool", spool, "--db", spool + "/carespool.sqlite3", "--schema", TestPaths.schemaJSON.path,
            "--http", "off", "--settle-ms", "200", "--rescan-ms", "300",
        ]
        let outcome = try await Subprocess.run(
            .path(FilePath(arguments[0])),
            arguments: Arguments(Array(arguments.dropFirst())),
            environment: Daemon.environment,
            input: .none,
            output: .discarded,
            error: .string(limit: 64 << 20)
        ) { execution -> [String: Bool] in
            let pid = execution.processIdentifier.value
            var checks: [String: Bool] = [:]
            defer { kill(pid, SIGTERM) }
            // Ready: the daemon replaced the planted retrying.json link with its own file.
            checks["ready"] = await eventually { fileInfo(spool + "/processing/retrying.json")?.regular == true }
            // Partner A's drops: every name class, a file nobody may read, a folder nobody may move.
            for (index, name) in named.enumerated() {
                Self.plant(a, name, event("H\(index)", "2025-03-01T10:00:00Z") + "\n", owner: Self.partnerA)
            }
            Self.plant(a, Array("locked.json".utf8), event("L", "2025-03-01T10:00:00Z"), owner: Self.partnerA, mode: 0)
            // A bad file left 0644 by its sender (umask 022): the daemon may read it, not write it.
            Self.plant(a, Array("broken.json".utf8), "{broken", owner: Self.partnerA, mode: 0o644)
            mkdir(a + "/folder", 0o555)
            chown(a + "/folder", Self.ids(Self.partnerA).uid, Self.ids(Self.partnerA).gid)
            // Partner B's upload in progress: a name the daemon leaves alone.
            Self.plant(b, Array("upload.csv.part".utf8), "mrn,first_name\n", owner: Self.partnerB)
            let view = SpoolView(root: spool)
            checks["all finished"] = await eventually(timeout: .seconds(30)) {
                view.done().count == named.count && view.failed().count == 2
            }
            try? await Task.sleep(for: .seconds(2))  // several rescans over the unclaimable folder
            // What each neighbour can reach.
            let pa = Self.partnerA
            checks["A writes its own inbox"] = try await Self.shAs(pa, "touch \(a)/x.part && rm \(a)/x.part")
            for target in [
                "ls \(b)", "cat \(b)/upload.csv.part", "ls \(spool)/done", "ls \(spool)/failed", "ls \(spool)/tmp",
                "ls \(spool)/processing", "ls \(spool)/keys", "cat \(spool)/carespool.sqlite3",
                "cat \(spool)/carespool.sqlite3-wal", "ln -s /etc/passwd \(spool)/tmp/.w-0000000000000000",
                "ls \(spool)/inbox", "ls \(spool)",
            ] {
                checks["A cannot: " + target] = try await !Self.shAs(pa, target + " >/dev/null 2>&1")
            }
            let op = Self.operatorUser
            for target in [
                "cat \(spool)/carespool.sqlite3", "ls \(spool)/done/appointments", "ls \(spool)/failed/appointments",
                "cat \(spool)/failed/appointments/*.error.json",
            ] {
                checks["the operator can: " + target] = try await Self.shAs(op, group: ops, target + " >/dev/null 2>&1")
            }
            for target in ["touch \(spool)/tmp/x", "cat \(spool)/processing/retrying.json", "ls \(b)"] {
                checks["the operator cannot: " + target] = try await !Self.shAs(
                    op,
                    group: ops,
                    target + " >/dev/null 2>&1"
                )
            }
            // The operator's status: what it may read, and "-" for what it may not (processing/, partners').
            let status = try await Self.run([
                "/usr/bin/setpriv", "--reuid=" + op, "--regid=" + ops, "--init-groups", Daemon.binary, "status",
                "--config", config, "--spool", spool,
            ])
            checks["the operator's status: \(status.err)"] =
                status.status == .exited(0) && status.out.contains("a folder this user may not read")
            // The inbox of partner B swapped for a link to a folder the daemon must not empty.
            let elsewhere = dir.path + "/elsewhere"
            mkdir(elsewhere, 0o777)
            Self.plant(elsewhere, Array("other.csv".utf8), "mrn,first_name\n", owner: Self.partnerB, mode: 0o666)
            checks["swapped"] = rename(b, b + ".old") == 0 && symlink(elsewhere, b) == 0
            // Rescans come 1 s apart; eight seconds of them, for a busy machine: the swap must be seen
            // before the stop.
            try? await Task.sleep(for: .seconds(8))
            checks["nothing taken from the link's target"] = FileManager.default.fileExists(
                atPath: elsewhere + "/other.csv"
            )
            return checks
        }
        let log = outcome.standardError ?? ""
        for (check, held) in outcome.closureResult.sorted(by: { $0.key < $1.key }) {
            #expect(held, "\(check)\n\(log.suffix(4000))")
        }
        let view = SpoolView(root: spool)
        // Every name claimed once, by its bytes, its whole name in the ledger.
        let database = try view.database()
        let stored = try await database.read { db in
            try Row.fetchAll(db, sql: "SELECT hex(original_name) AS name, outcome FROM files")
        }
        let names = Set(stored.map { $0["name"] as String })
        for name in named.map(SpoolName.display) {
            let hex = Array(name.utf8).map { String(format: "%02X", $0) }.joined()
            #expect(names.contains(hex), "ledger lacks \(name.debugDescription)")
        }
        #expect(stored.count == named.count + 2, "each file once, the unreadable and the broken one as verdicts")
        let locked = try #require(view.sidecars().first { $0.hasSuffix("locked.json.error.json") })
        let reason = try String(contentsOfFile: spool + "/failed/appointments/" + locked, encoding: .utf8)
        #expect(reason.contains("cannot read the file") && reason.contains("EACCES"), "\(reason)")
        // The folder: said once, left in place, not counted as waiting.
        #expect(log.components(separatedBy: "inbox entry cannot be claimed").count == 2, "\(log)")
        #expect(FileManager.default.fileExists(atPath: a + "/folder"))
        let status = try await Daemon.command(["status", "--json", "--config", config, "--spool", spool])
        #expect(status.out.contains("{\"folder\":\"inbox\",\"kind\":\"appointments\",\"files\":0"), "\(status.out)")
        // The swapped inbox: said once, no longer used.
        #expect(log.components(separatedBy: "inbox folder was replaced").count == 2, "\(log)")
        // Nothing outside the spool touched; state files the daemon's alone, with no names in them.
        #expect(canary.isUntouched())
        #expect(fileInfo(spool + "/processing/retrying.json")?.mode == 0o600)
        let databaseFile = fileInfo(spool + "/carespool.sqlite3")
        #expect(databaseFile?.mode == 0o640, "the database is the daemon's and its operators' only")
        #expect(databaseFile?.gid == getgrnam(Self.operatorsGroup)!.pointee.gr_gid)
        // No control character of a name reaches an operator's terminal.
        let evil = try await database.read { db in
            try String.fetchOne(db, sql: "SELECT id FROM files WHERE original_name LIKE 'evil%'")
        }
        let shown = try await Daemon.command(["show", try #require(evil), "--spool", spool])
        #expect(!shown.out.contains("\u{1B}") && !shown.out.contains("\u{7}"), "\(shown.out.debugDescription)")
        #expect(shown.out.contains("evil\\u{1B}]0;owned\\u{7}\\u{A}| fake | row |.json"), "\(shown.out)")
        let failed = try await Daemon.command(["failed", "--spool", spool])
        #expect(!failed.out.contains("\u{1B}"))
        // The operator retries the partner's broken file as the daemon's user: with fs.protected_hardlinks
        // on, a link(2) of a file it may not write is refused (EPERM); the no-replace rename is not.
        let broken = try #require(
            try await database.read { db in
                try String.fetchOne(db, sql: "SELECT id FROM files WHERE original_name = 'broken.json'")
            }
        )
        let retried = try await Self.run([
            "/usr/bin/setpriv", "--reuid=" + d, "--regid=" + ops, "--init-groups", Daemon.binary, "retry", broken,
            "--config", config, "--spool", spool, "--db", spool + "/carespool.sqlite3",
        ])
        #expect(retried.status == .exited(0), "\(retried.err)")
        #expect(FileManager.default.fileExists(atPath: spool + "/inbox/appointments/broken.json"))
        var st = stat()
        #expect(lstat(spool + "/inbox/appointments/broken.json", &st) == 0 && st.st_uid == Self.ids(Self.partnerA).uid)
    }
}

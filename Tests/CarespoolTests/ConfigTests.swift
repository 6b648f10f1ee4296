import Config
import Crypto
import Foundation
import GRDB
import Spool
import Subprocess
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The configuration file: every key read, and every mistake named by file, line and key.
@Suite struct ConfigTests {
    static let kinds = ["appointments", "zoom", "intake"]
    static let sample = """
        # carespool.toml
        spool = "/var/spool/carespool"
        database = "/var/lib/carespool/carespool.sqlite3"
        log_level = "notice"
        settle_ms = 500

        [retention]
        done_days = 7

        [[inbox]]
        path = "/srv/sftp/acme/upload"
        kind = "intake"
        arrival = "rename"

        [[inbox]]
        path = "/srv/sftp/clinic/zoom"
        kind = "zoom"

        [http]
        listen = "0.0.0.0:8443"
        zoom_secrets = ["old", "new"]
        rate_per_second = 50

        [http.webhook_secrets]
        appointments = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]

        [[http.token]]
        name = "scheduler"
        sha256 = "9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08"
        routes = ["appointments", "intake"]

        [[http.token]]
        name = "etl"
        secret = "test"
        routes = ["*"]
        """

    /// One folder has one spelling (found by the second hostile review: `/p/.` and `/p` were two inboxes).
    @Test func pathsAreComparedInOneSpelling() {
        #expect(ConfigFile.normalized("/p/.") == "/p")
        #expect(ConfigFile.normalized("//p//q/") == "/p/q")
        #expect(ConfigFile.normalized("/x/../p") == "/p")
        #expect(ConfigFile.normalized("/../p") == "/p")
        #expect(ConfigFile.normalized("/") == "/")
        #expect(ConfigFile.normalized("sp6/./inbox/../inbox/intake") == "sp6/inbox/intake")
        #expect(ConfigFile.normalized("../a") == "../a")
    }

    @Test func everySettingIsRead() throws {
        let config = try ConfigFile(text: Self.sample, path: "c.toml", kinds: Self.kinds)
        #expect(config.spool == "/var/spool/carespool")
        #expect(config.database == "/var/lib/carespool/carespool.sqlite3")
        #expect(config.logLevel == "notice")
        #expect(config.settleMs == 500)
        #expect(config.rescanMs == nil)
        #expect(config.retentionDays == 7)
        #expect(config.inboxes.map(\.path) == ["/srv/sftp/acme/upload", "/srv/sftp/clinic/zoom"])
        #expect(config.inboxes.map(\.kind) == ["intake", "zoom"])
        #expect(config.inboxes.map(\.arrival) == ["rename", "close"])
        #expect(config.httpListen == "0.0.0.0:8443")
        #expect(config.zoomSecrets == ["old", "new"])
        #expect(config.ratePerSecond == 50)
        #expect(config.webhookSecrets == ["appointments": ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]])
        // sha256 of "test", given as hex (any case) or computed from the secret: the same token.
        #expect(config.tokens.count == 2)
        #expect(config.tokens[0].sha256 == config.tokens[1].sha256)
        #expect(config.tokens[0].routes == ["appointments", "intake"])
        #expect(config.tokens[1].routes == Self.kinds)
        #expect(try ConfigFile(text: "", path: "empty.toml", kinds: Self.kinds).spool == nil)
    }

    @Test(arguments: [
        ("done_days = 7", "done_days = \"7\"", 8, "retention.done_days", "must be an integer"),
        ("settle_ms = 500", "settle_ms = 500\nsettle = 1", 6, "settle", "unknown key"),
        ("kind = \"zoom\"", "kind = \"video\"", 17, "inbox[1].kind", "must be one of appointments, zoom, intake"),
        ("path = \"/srv/sftp/acme/upload\"", "path = \"upload\"", 11, "inbox[0].path", "an absolute folder path"),
        ("listen = \"0.0.0.0:8443\"", "listen = \"8443\"", 20, "http.listen", "must be HOST:PORT or \"off\""),
        ("secret = \"test\"", "secret = \"test\"\nsha256 = \"00\"", 32, "http.token[1]", "give exactly one of"),
        ("routes = [\"*\"]", "routes = [\"billing\"]", 35, "http.token[1].routes", "list routes among"),
        ("log_level = \"notice\"", "log_level = \"loud\"", 4, "log_level", "must be one of trace"),
        ("arrival = \"rename\"", "arrival = \"moved\"", 13, "inbox[0].arrival", "must be one of close, rename"),
        // One folder, one inbox (found by the hostile review: listed twice, a folder was counted twice).
        (
            "path = \"/srv/sftp/clinic/zoom\"", "path = \"/srv/sftp/acme/upload/\"", 16, "inbox[1].path",
            "/srv/sftp/acme/upload is already an inbox"
        ),
        (
            "path = \"/srv/sftp/clinic/zoom\"", "path = \"/srv/x/../sftp/./acme//upload/.\"", 16, "inbox[1].path",
            "/srv/sftp/acme/upload is already an inbox"
        ),
        (
            "path = \"/srv/sftp/clinic/zoom\"", "path = \"/var/spool/carespool/inbox/zoom//\"", 16, "inbox[1].path",
            "/var/spool/carespool/inbox/zoom is one of the spool's own inboxes"
        ),
        (
            "settle_ms = 500", "settle_ms = 500\nclose_grace_ms = 3600001", 6, "close_grace_ms",
            "must be at most 3600000"
        ),
        ("appointments = [", "appointment = [", 25, "http.webhook_secrets.appointment", "unknown key"),
        // Beyond the bounds a duration would overflow: a trap at run time, not an error at start.
        ("settle_ms = 500", "settle_ms = 99999999999999999", 5, "settle_ms", "must be at most 86400000"),
        ("done_days = 7", "done_days = 9223372036854775807", 8, "retention.done_days", "must be at most 36500"),
    ])
    func aMistakeIsNamedByLineAndKey(
        original: String,
        replacement: String,
        line: Int,
        key: String,
        message: String
    ) throws {
        let text = Self.sample.replacingOccurrences(of: original, with: replacement)
        #expect(text != Self.sample)
        let error = #expect(throws: ConfigError.self) {
            try ConfigFile(text: text, path: "/etc/carespool/carespool.toml", kinds: Self.kinds)
        }
        #expect(error?.line == line)
        #expect(error?.key == key)
        #expect(error?.message.hasPrefix(message) == true, "\(error?.message ?? "")")
        #expect(error?.description.hasPrefix("/etc/carespool/carespool.toml:\(line): \(key): ") == true)
    }

    /// A token or an opened route for "*" means the HTTP door's routes, not every kind: a Zoom report has
    /// no route (found by the systemd check: the installed service trapped at start on such a token).
    @Test func starMeansTheRoutesNotEveryKind() throws {
        let text = """
            [http]
            open_routes = ["*"]

            [[http.token]]
            name = "scheduler"
            secret = "0123456789abcdef0123456789abcdef"
            routes = ["*"]
            """
        let config = try ConfigFile(
            text: text,
            path: "c.toml",
            kinds: Self.kinds + ["zoom-report"],
            routes: Self.kinds
        )
        #expect(config.tokens.first?.routes == Self.kinds)
        #expect(config.openRoutes == Self.kinds)
        let error = #expect(throws: ConfigError.self) {
            try ConfigFile(
                text: text.replacingOccurrences(of: "routes = [\"*\"]", with: "routes = [\"zoom-report\"]"),
                path: "c.toml",
                kinds: Self.kinds + ["zoom-report"],
                routes: Self.kinds
            )
        }
        #expect(error?.message.hasPrefix("list routes among appointments, zoom, intake") == true)
    }

    /// Zoom report inboxes' local times: `[zoom_report]` for the spool's own, an `[[inbox]]`'s own, each
    /// key else the section's; an abbreviation, an unknown zone or a path is refused, and only an inbox of
    /// kind zoom-report reads local times.
    @Test func zoomReportLocalTimesAreReadAndCheckedByLine() throws {
        let kinds = Self.kinds + ["zoom-report"]
        let text = """
            [zoom_report]
            timezone = "America/Chicago"
            clock = "12h"

            [[inbox]]
            path = "/srv/sftp/berlin"
            kind = "zoom-report"
            timezone = "Europe/Berlin"
            date_order = "DD/MM/YYYY"
            """
        let config = try ConfigFile(text: text, path: "c.toml", kinds: kinds)
        #expect(config.zoomReportTimes.timezone == "America/Chicago")
        #expect(config.zoomReportTimes.clock == "12h")
        let berlin = try #require(config.inboxTimes["/srv/sftp/berlin"])
        #expect(berlin.timezone == "Europe/Berlin")
        #expect(berlin.dateOrder == "DD/MM/YYYY")
        #expect(berlin.clock == "12h")
        for (original, replacement, line, key, message) in [
            ("\"America/Chicago\"", "\"CST\"", 2, "zoom_report.timezone", "CST is not an IANA time zone name"),
            ("\"America/Chicago\"", "\"../../etc/passwd\"", 2, "zoom_report.timezone", "../../etc/passwd is not"),
            ("\"America/Chicago\"", "\"Etc/GMT+5\"", 2, "zoom_report.timezone", "Etc/GMT+5 is a fixed offset"),
            ("\"Europe/Berlin\"", "\"Mars/Olympus\"", 8, "inbox[0].timezone", "Mars/Olympus is not"),
            ("\"12h\"", "\"13h\"", 3, "zoom_report.clock", "must be one of either, 12h, 24h"),
            ("\"DD/MM/YYYY\"", "\"YYYY/MM/DD\"", 9, "inbox[0].date_order", "must be one of MM/DD/YYYY"),
            (
                "kind = \"zoom-report\"", "kind = \"intake\"", 8, "inbox[0].timezone",
                "only an inbox of kind zoom-report"
            ),
        ] {
            let error = #expect(throws: ConfigError.self) {
                try ConfigFile(
                    text: text.replacingOccurrences(of: original, with: replacement),
                    path: "c.toml",
                    kinds: kinds
                )
            }
            #expect(error?.line == line, "\(replacement)")
            #expect(error?.key == key, "\(replacement)")
            #expect(error?.message.hasPrefix(message) == true, "\(error?.message ?? "")")
        }
    }

    /// The commented default that `make install` puts in /etc/carespool: valid as shipped, and with
    /// every commented setting switched on.
    @Test func theShippedDefaultFileIsValid() throws {
        let path = TestPaths.repoRoot.appendingPathComponent("config/carespool.toml").path
        let text = try String(contentsOfFile: path, encoding: .utf8)
        let shipped = try ConfigFile(text: text, path: path, kinds: Self.kinds)
        #expect(shipped.spool == "/var/spool/carespool" && shipped.tokens.isEmpty)
        // Uncomment every `# key = value` line (the placeholders made concrete).
        let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line -> String in
            guard line.hasPrefix("# "), line.dropFirst(2).first.map({ $0.isLetter || $0 == "[" }) == true,
                line.contains("=") || line.hasPrefix("# [")
            else { return String(line) }
            return String(line.dropFirst(2))
                .replacingOccurrences(of: "\"…64 hex digits…\"", with: "\"" + String(repeating: "ab", count: 32) + "\"")
        }.joined(separator: "\n")
        let all = try ConfigFile(text: uncommented, path: path, kinds: Self.kinds)
        #expect(all.retentionDays == 30 && all.settleMs == 2_000 && all.openHoldMs == 600_000 && all.inboxes.count == 1)
        #expect(all.httpListen == "127.0.0.1:8080" && all.tokens.count == 2 && all.webhookSecrets.count == 1)
        #expect(all.tokens.last?.secretFile == "importer-token" && all.zoomSecretFiles == ["zoom-secret"])
        #expect(all.maxConnections == 1_024 && all.ingestBodyLimit == 64 << 20)
    }

    @Test func aSyntaxErrorIsNamedByLine() {
        let error = #expect(throws: ConfigError.self) {
            try ConfigFile(text: "spool = \"/x\"\n\n[http\nlisten = 1\n", path: "bad.toml", kinds: Self.kinds)
        }
        #expect(error?.line == 3)
        #expect(error?.key == nil)
    }

    @Test func purgeRemovesOnlyDayFoldersBeforeTheCutoff() throws {
        let dir = TempDir("purge")
        defer { dir.cleanup() }
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments", "zoom"])
        try spool.prepare()
        let cutoff = Spool.cutoffDay(daysAgo: 30)
        let today = Spool.cutoffDay(daysAgo: 0)
        #expect(cutoff < today && cutoff.count == 10)
        for (kind, day, files) in [
            ("appointments", "2020-01-01", 3), ("appointments", today, 2), ("zoom", "2024-02-29", 1),
            ("zoom", "notes", 1),
        ] {
            let folder = spool.donePath(kind) + "/" + day
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
            for n in 0..<files {
                FileManager.default.createFile(atPath: folder + "/f\(n).json", contents: Data("{}".utf8))
            }
        }
        let preview = try spool.purgeDone(before: cutoff, dryRun: true)
        #expect(preview.folders == ["appointments/2020-01-01", "zoom/2024-02-29"] && preview.files == 4)
        #expect(FileManager.default.fileExists(atPath: spool.donePath("appointments") + "/2020-01-01/f0.json"))
        let removed = try spool.purgeDone(before: cutoff)
        #expect(removed.folders == ["appointments/2020-01-01", "zoom/2024-02-29"] && removed.files == 4)
        #expect(try spool.scanAll(spool.donePath("appointments")) == [today])
        #expect(try spool.scanAll(spool.donePath("zoom")) == ["notes"])
    }
}

/// The real binary run from a configuration file, and `config check`.
@Suite(.serialized) struct ConfigDaemonTests {
    @Test func theDaemonRunsFromItsConfigurationFile() async throws {
        let dir = TempDir("configd")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let partner = dir.path + "/sftp/acme/upload"
        try FileManager.default.createDirectory(atPath: partner, withIntermediateDirectories: true)
        // A day folder older than the retention, and a stray folder that is no day: only the first goes.
        let old = spool + "/done/appointments/2001-01-01"
        try FileManager.default.createDirectory(atPath: old, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: old + "/x.json", contents: Data("{}".utf8))
        let port = freePort()
        let config = dir.path + "/carespool.toml"
        // sha256 of "s3cret" (sha256sum): the file never holds the token itself.
        try """
        spool = "\(spool)"
        database = "\(dir.path)/db.sqlite3"
        schema = "\(TestPaths.schemaJSON.path)"
        settle_ms = 300
        open_hold_ms = 45000
        rescan_ms = 1000

        [retention]
        done_days = 30

        [[inbox]]
        path = "\(partner)"
        kind = "appointments"
        arrival = "rename"

        [http]
        listen = "127.0.0.1:\(port)"

        [[http.token]]
        name = "scheduler"
        sha256 = "\(SHA256Hex.of("s3cret"))"
        routes = ["appointments"]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let check = try await Daemon.command(["config", "check", config])
        #expect(check.status == .exited(0))
        #expect(check.out.contains("listen = \"127.0.0.1:\(port)\"") && !check.out.contains("s3cret"))
        #expect(check.out.contains("open_hold_ms = 45000"), "\(check.out)")
        #expect(check.out.contains("close_grace_ms = 1000") && check.out.contains("arrival = \"rename\""))

        let run = try await Daemon.serveWithConfig(config) { pid in
            let url = "http://127.0.0.1:\(port)/webhook/appointments"
            let post = ["-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"]
            let without = try await curl(post + ["--data-binary", event("C1", "2025-01-10T12:30:00Z"), url])
            let with = try await curl(
                post + [
                    "-H", "Authorization: Bearer s3cret", "--data-binary", event("C2", "2025-01-10T12:30:00Z"), url,
                ]
            )
            try dropLikeRsync(event("C3", "2025-01-10T12:30:00Z"), into: partner, name: "from-partner.json")
            let view = SpoolView(root: spool)
            let processed = await eventually { view.done().count == 2 }
            let purged = await eventually { !FileManager.default.fileExists(atPath: old) }
            kill(pid, SIGTERM)
            return (without, with, processed, purged)
        }
        #expect(run.result.0 == "401")
        #expect(run.result.1 == "202")
        #expect(run.result.2)
        #expect(run.result.3)
        #expect(run.status == .exited(0))
        #expect(try FileManager.default.contentsOfDirectory(atPath: partner).isEmpty)
        let stored = try await SpoolView(root: spool).database(dir.path + "/db.sqlite3").read { db in
            try String.fetchAll(db, sql: "SELECT appointment_id FROM appointment_events ORDER BY 1")
        }
        #expect(stored == ["C2", "C3"])
    }

    @Test func aBadConfigurationStopsStartUpWithStatus78NamingLineAndKey() async throws {
        let dir = TempDir("configbad")
        defer { dir.cleanup() }
        let config = dir.path + "/carespool.toml"
        try "spool = \"\(dir.path)/spool\"\n\n[http]\nlisten = \"0.0.0.0:8080\"\nrate_per_second = \"fast\"\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        for arguments in [["config", "check", config], ["serve", "--config", config]] {
            let result = try await Daemon.command(arguments)
            #expect(result.status == .exited(78))
            #expect(result.err.contains("\(config):5: http.rate_per_second: must be a number"), "\(result.err)")
        }
        // A route opened without credentials on a public address: refused, naming the key.
        try "[http]\nlisten = \"0.0.0.0:8080\"\nopen_routes = [\"intake\"]\n"
            .write(toFile: config, atomically: true, encoding: .utf8)
        let open = try await Daemon.command(["serve", "--config", config, "--spool", dir.path + "/spool"])
        #expect(open.status == .exited(78))
        #expect(
            open.err.contains("\(config):2: http.listen: routes opened without credentials (intake)"),
            "\(open.err)"
        )
        // Listing a route that does not exist is an error too.
        try "[http]\nopen_routes = [\"billing\"]\n".write(toFile: config, atomically: true, encoding: .utf8)
        let unknown = try await Daemon.command(["config", "check", config])
        #expect(unknown.status == .exited(78) && unknown.err.contains("http.open_routes"), "\(unknown.err)")
        #expect(try await Daemon.command(["config", "check", dir.path + "/missing.toml"]).status == .exited(78))
        // An inbox on another filesystem than the spool (/dev/shm is a tmpfs): files could never be
        // claimed by rename, so start-up stops.
        let shm = "/dev/shm/carespool-test-\(getpid())"
        defer { try? FileManager.default.removeItem(atPath: shm) }
        try FileManager.default.createDirectory(atPath: shm, withIntermediateDirectories: true)
        var shmStat = stat()
        var tmpStat = stat()
        #expect(stat(shm, &shmStat) == 0 && stat(dir.path, &tmpStat) == 0 && shmStat.st_dev != tmpStat.st_dev)
        try "[[inbox]]\npath = \"\(shm)\"\nkind = \"intake\"\n".write(toFile: config, atomically: true, encoding: .utf8)
        let elsewhere = try await Daemon.command([
            "serve", "--config", config, "--spool", dir.path + "/spool", "--http", "off",
        ])
        #expect(elsewhere.status == .exited(78))
        #expect(elsewhere.err.contains("\(config):2: inbox[0].path: is on another filesystem"), "\(elsewhere.err)")
    }

    /// An empty or weak secret — a Standard Webhooks `whsec_` with no key, an empty Zoom secret or bearer
    /// token, anything under 16 bytes of key — is refused at start naming the flag or the file's key (issue
    /// 16, finding 6): before, `whsec_` was taken and a body signed with the empty key passed.
    @Test func emptyOrWeakSecretsAreRefusedAtStartNamingTheKey() async throws {
        let dir = TempDir("secrets")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let strong = "whsec_" + Data(repeating: 7, count: 24).base64EncodedString()
        let weak = "whsec_" + Data(repeating: 7, count: 8).base64EncodedString()
        for (flags, named) in [
            (["--webhook-secret", "appointments:whsec_"], "--webhook-secret appointments: the secret is empty"),
            (["--webhook-secret", "appointments:"], "--webhook-secret appointments: the secret is empty"),
            (["--webhook-secret", "intake:" + weak], "--webhook-secret intake: the secret is too weak: 8 bytes"),
            (["--zoom-secret", ""], "--zoom-secret: the secret is empty"),
            (["--zoom-secret", "short-secret"], "--zoom-secret: the secret is too weak: 12 bytes"),
            (["--http-token", "ops::*"], "--http-token ops: the secret is empty"),
            (["--http-token", "ops:s3cret:*"], "--http-token ops: the secret is too weak: 6 bytes"),
            // Checked even with HTTP off: a weak secret is a mistake either way.
            (["--http", "off", "--zoom-secret", "xy"], "--zoom-secret: the secret is too weak: 2 bytes"),
        ] {
            let result = try await Daemon.command(["serve", "--spool", spool] + flags)
            #expect(result.status != .exited(0), "\(flags)")
            #expect(result.err.contains(named), "\(flags): \(result.err)")
        }
        let config = dir.path + "/carespool.toml"
        for (text, line, key) in [
            ("[http]\n\n[http.webhook_secrets]\nappointments = [\"whsec_\"]\n", 4, "http.webhook_secrets.appointments"),
            ("[http]\nzoom_secrets = [\"\(strong)\", \"old\"]\n", 2, "http.zoom_secrets"),
            (
                "[http]\n[[http.token]]\nname = \"etl\"\nsecret = \"test\"\nroutes = [\"*\"]\n", 4,
                "http.token[0].secret"
            ),
        ] {
            try text.write(toFile: config, atomically: true, encoding: .utf8)
            for arguments in [["config", "check", config], ["serve", "--config", config, "--spool", spool]] {
                let result = try await Daemon.command(arguments)
                #expect(result.status == .exited(78), "\(arguments): \(text)")
                #expect(result.err.contains("\(config):\(line): \(key): is "), "\(result.err)")
            }
        }
        // Strong secrets pass, a token given as its SHA-256 too (it cannot be judged).
        try """
        [http]
        zoom_secrets = ["\(String(repeating: "z", count: 16))"]

        [http.webhook_secrets]
        appointments = ["\(strong)"]

        [[http.token]]
        name = "etl"
        secret = "0123456789abcdef"
        routes = ["*"]

        [[http.token]]
        name = "ops"
        sha256 = "\(SHA256Hex.of("s3cret"))"
        routes = ["*"]
        """.write(toFile: config, atomically: true, encoding: .utf8)
        let check = try await Daemon.command(["config", "check", config])
        #expect(check.status == .exited(0), "\(check.err)")
    }

    /// A flag beyond its bound is refused at start (it would overflow a duration: a trap later).
    @Test func aFlagBeyondItsBoundIsRefusedAtStart() async throws {
        let dir = TempDir("configflag")
        defer { dir.cleanup() }
        let result = try await Daemon.command([
            "serve", "--spool", dir.path + "/spool", "--http", "off", "--settle-ms", "99999999999999999",
        ])
        #expect(result.status != .exited(0))
        #expect(result.err.contains("--settle-ms must be at most 86400000"), "\(result.err)")
    }
}

enum SHA256Hex {
    static func of(_ text: String) -> String {
        Array(SHA256.hash(data: Array(text.utf8))).map { String(format: "%02x", $0) }.joined()
    }
}

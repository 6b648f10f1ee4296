import Foundation
import HTTPIngress
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import Spool
import Subprocess
import Testing
import WebhookSignatures

#if canImport(Glibc)
    import Glibc
#endif

#if canImport(System)
    import System
#else
    import SystemPackage
#endif

/// Every door locked (issue 16, findings 1 and 5): a route with no credential of its own is closed, an
/// opened route listens on loopback only, and rate limits are taken per authenticated sender, after
/// authentication, with failed attempts limited per client address on their own.
@Suite struct RouteAuthTests {
    let dir = TempDir("routeauth")

    func app(_ configuration: HTTPConfiguration) throws -> some ApplicationProtocol {
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments", "zoom", "intake"])
        try spool.prepare()
        let router = buildRouter(
            configuration: configuration,
            spool: spool,
            health: { HealthReport(databaseUp: true, received: 0, inserted: 0, inbox: 0, processing: 0, failed: 0) }
        )
        return Application(router: router)
    }

    static let body = ByteBuffer(string: event("RA1", "2025-03-01T10:00:00Z"))

    /// Found live: with only a Zoom secret configured, `/ingest` and `/webhook/appointments` answered 202
    /// to requests with no credentials at all.
    @Test func aRouteWithoutACredentialOfItsOwnIsClosed() async throws {
        defer { dir.cleanup() }
        for configuration in [
            HTTPConfiguration(zoomSecrets: ["0123456789abcdef0123"]),
            HTTPConfiguration(webhookSecrets: ["zoom": ["whsec_" + Base64.encode(Array(repeating: 7, count: 32))]]),
            HTTPConfiguration(),
        ] {
            try await app(configuration).test(.router) { client in
                for route in ["/webhook/appointments", "/ingest"] {
                    try await client.execute(
                        uri: route,
                        method: .post,
                        headers: [.contentType: "application/json"],
                        body: route == "/ingest" ? ByteBuffer(string: "[]") : Self.body
                    ) { response in
                        #expect(response.status == .unauthorized, "\(route)")
                        #expect(String(buffer: response.body).contains("closed"))
                    }
                }
                // Nor may anyone read a request's state without a credential of its route.
                try await client.execute(uri: "/spool/01900000-0000-7000-8000-000000000001", method: .get) {
                    #expect($0.status == .unauthorized)
                }
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path + "/spool/inbox/appointments").isEmpty)
        }
    }

    @Test func eachRouteSaysHowItIsProtected() {
        let token = HTTPToken(spec: "scheduler:0123456789abcdef:appointments")!
        let configuration = HTTPConfiguration(
            tokens: [token],
            zoomSecrets: ["0123456789abcdef0123"],
            openRoutes: []
        )
        #expect(configuration.protection(of: "appointments") == .bearer(["scheduler"]))
        #expect(configuration.protection(of: "zoom") == .zoomSignature)
        #expect(configuration.protection(of: "intake") == .bearer([]))  // no token names it: nobody passes
        #expect(HTTPConfiguration(openRoutes: ["intake"]).protection(of: "intake") == .open)
        #expect(HTTPConfiguration().protection(of: "intake") == .closed)
        // An opened route: loopback only.
        #expect(HTTPConfiguration(host: "0.0.0.0", openRoutes: ["intake"]).refusal != nil)
        #expect(HTTPConfiguration(host: "::1", openRoutes: ["intake"]).refusal == nil)
        #expect(HTTPConfiguration(host: "0.0.0.0", tokens: [token]).refusal == nil)
    }

    /// An attacker with ever new addresses (IPv6 gives plenty) keeps every failure bucket drained: the
    /// buckets stay bounded, and a full table is started over rather than filtered at every request.
    @Test func failureBucketsStayBoundedWhateverTheAddresses() {
        let failures = RateLimiter(rate: 1, burst: 1)
        for n in 0..<(RateLimiter.maxBuckets * 3) {
            _ = failures.take("2001:db8::\(n)")
            _ = failures.take("2001:db8::\(n)")  // drained: not dropped by a prune
        }
        #expect(failures.count <= RateLimiter.maxBuckets)
    }

    @Test func aBearerTokenReadsOnlyTheStateOfItsOwnRoutes() async throws {
        defer { dir.cleanup() }
        let scheduler = HTTPToken(spec: "scheduler:0123456789abcdef:appointments")!
        let intake = HTTPToken(spec: "intake:fedcba9876543210:intake")!
        try await app(HTTPConfiguration(tokens: [scheduler, intake])).test(.router) { client in
            let id = try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer 0123456789abcdef"],
                body: Self.body
            ) { response -> String in
                #expect(response.status == .accepted)
                return response.headers[HTTPField.Name("x-carespool-id")!] ?? ""
            }
            try await client.execute(
                uri: "/spool/" + id,
                method: .get,
                headers: [.authorization: "Bearer 0123456789abcdef"]
            ) { #expect($0.status == .ok) }
            // Another route's token does not find it.
            try await client.execute(
                uri: "/spool/" + id,
                method: .get,
                headers: [.authorization: "Bearer fedcba9876543210"]
            ) { #expect($0.status == .notFound) }
        }
    }
}

/// Found live: the rate bucket was per route and taken before the signature was checked, so unsigned
/// junk posted to `/zoom_events/events` made Zoom's genuinely signed delivery get 429. The real binary,
/// the junk from 127.0.0.2, Zoom from 127.0.0.1 (curl --interface).
@Suite(.serialized) struct RouteAuthDaemonTests {
    @Test func anAttackersFailuresNeverRateLimitAGenuineSignedSender() async throws {
        let dir = TempDir("ratelimit")
        defer { dir.cleanup() }
        let spool = dir.path + "/spool"
        let port = freePort()
        let secret = "0123456789abcdef0123"
        let url = "http://127.0.0.1:\(port)/zoom_events/events"
        let run = try await Daemon.serve(
            spool: spool,
            arguments: ["--http", "127.0.0.1:\(port)", "--zoom-secret", secret, "--http-rate", "1"]
        ) { pid -> [String] in
            defer { kill(pid, SIGTERM) }
            _ = try await curl(["-o", "/dev/null", "http://127.0.0.1:\(port)/health"])
            // Until its address is answered 429: 20 failures in a burst, then 1 a second refill. The junk
            // comes from one shell loop of its own, not a request per step of this task: on a busy machine
            // a test task can be held back long enough (it took 10 s for 30 under a full suite) for the
            // refill to keep pace with it.
            let loop = """
                for n in $(seq 120); do
                  code=$(curl -s --interface 127.0.0.2 -o /dev/null -w '%{http_code}' \\
                    -H 'Content-Type: application/json' --data '{"event":"meeting.started"}' '\(url)')
                  echo "$code"; [ "$code" = 429 ] && break
                done
                """
            let junk = try await HostileNeighbourTests.run(["/bin/sh", "-c", loop]).out.split(separator: "\n").map(
                String.init
            )
            let timestamp = String(Int(time(nil)))
            let body = zoomEvent("meeting.started", ts: 1_700_000_000_000)
            func genuine(from address: String, _ body: String) async throws -> String {
                let signature =
                    "v0=" + ZoomSignature.hexHMAC(key: secret, message: Array("v0:\(timestamp):\(body)".utf8))
                return try await curl([
                    "--interface", address, "-o", "/dev/null", "-w", "%{http_code}", "-H",
                    "Content-Type: application/json", "-H", "x-zm-signature: " + signature, "-H",
                    "x-zm-request-timestamp: " + timestamp, "--data", body, url,
                ])
            }
            // From elsewhere, and from the junk's own address (a reverse proxy, a NAT: one address for all).
            let elsewhere = try await genuine(from: "127.0.0.1", body)
            try? await Task.sleep(for: .seconds(1))  // the sender's own rate: 1 a second
            let sameAddress = try await genuine(from: "127.0.0.2", zoomEvent("meeting.ended", ts: 1_700_000_100_000))
            return [junk.first ?? "", junk.last ?? "", elsewhere, sameAddress, String(junk.count)]
        }
        // The junk: 401 until its address has used up its failed attempts, then 429 before it is read.
        #expect(run.result[0] == "401")
        #expect(run.result[1] == "429")
        #expect(Int(run.result[4]).map { $0 > 20 } == true, "429 only past the burst: \(run.result[4]) sent")
        // Zoom, signed, from elsewhere and from the junk's own address: heard (200: what Zoom counts).
        #expect(run.result[2] == "200", "\(run.log.suffix(2000))")
        #expect(run.result[3] == "200", "\(run.log.suffix(2000))")
    }
}

/// Secrets from files and systemd credentials (issue 16, finding 6): `--http-token NAME:SECRET` shows in
/// `/proc/*/cmdline`; a file, or `LoadCredential=`'s `$CREDENTIALS_DIRECTORY`, does not.
@Suite struct SecretFileTests {
    static func carespool(_ arguments: [String], credentials: String?) async throws -> (Int32?, String, String) {
        var environment = Daemon.environment
        if let credentials { environment = environment.updating(["CREDENTIALS_DIRECTORY": credentials]) }
        let result = try await Subprocess.run(
            .path(FilePath(Daemon.binary)),
            arguments: Arguments(arguments),
            environment: environment,
            output: .string(limit: 1 << 20),
            error: .string(limit: 1 << 20)
        )
        var code: Int32?
        if case .exited(let value) = result.terminationStatus { code = value }
        return (code, result.standardOutput ?? "", result.standardError ?? "")
    }

    @Test func aTokenFromACredentialProtectsItsRouteAndAWeakOrExposedFileIsRefused() async throws {
        let dir = TempDir("secretfile")
        defer { dir.cleanup() }
        let credentials = dir.path + "/credentials"
        try FileManager.default.createDirectory(atPath: credentials, withIntermediateDirectories: true)
        func secret(_ name: String, _ text: String, mode: mode_t = 0o400) throws {
            try text.write(toFile: credentials + "/" + name, atomically: false, encoding: .utf8)
            chmod(credentials + "/" + name, mode)
        }
        try secret("scheduler", "a-long-enough-secret-0123\n")
        try secret("short", "tiny\n")
        try secret("exposed", "another-long-secret-4567\n", mode: 0o644)
        let config = dir.path + "/carespool.toml"
        func write(_ file: String) throws {
            try
                "[http]\n\n[[http.token]]\nname = \"scheduler\"\nsecret_file = \"\(file)\"\nroutes = [\"appointments\"]\n"
                .write(toFile: config, atomically: true, encoding: .utf8)
        }
        try write("scheduler")
        let good = try await Self.carespool(["config", "check", config], credentials: credentials)
        #expect(good.0 == 0, "\(good.2)")
        #expect(good.1.contains("POST /webhook/appointments bearer token scheduler"), "\(good.1)")
        #expect(!good.1.contains("a-long-enough-secret"), "a secret is never printed")
        // No credentials directory: the name cannot be resolved, and says why.
        let missing = try await Self.carespool(["config", "check", config], credentials: nil)
        #expect(missing.0 == 78 && missing.2.contains("CREDENTIALS_DIRECTORY"), "\(missing.2)")
        try write("short")
        let weak = try await Self.carespool(["config", "check", config], credentials: credentials)
        #expect(weak.0 == 78 && weak.2.contains("http.token[0].secret_file: is too weak"), "\(weak.2)")
        // A flag naming a file everyone may read.
        let exposed = try await Self.carespool(
            [
                "serve", "--spool", dir.path + "/spool", "--http", "off", "--zoom-secret-file",
                credentials + "/exposed",
            ],
            credentials: nil
        )
        #expect(exposed.0 == 64 && exposed.2.contains("readable by everyone"), "\(exposed.2)")
    }
}

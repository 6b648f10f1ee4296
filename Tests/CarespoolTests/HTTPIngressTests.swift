import Foundation
import HTTPIngress
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import JSONSchema
import NIOCore
import Spool
import Testing
import WebhookSignatures

/// The HTTP routes through HummingbirdTesting, writing into a real temporary spool.
@Suite struct HTTPIngressTests {
    let dir = TempDir("http")

    /// Every route opened without credentials, for the tests of what the door checks besides auth.
    static let allRoutes: Set<String> = ["appointments", "zoom", "intake"]

    func app(
        _ configuration: HTTPConfiguration = .init(openRoutes: allRoutes),
        now: Int = 1_720_707_175,
        databaseUp: Bool = true
    ) throws -> (some ApplicationProtocol, Spool) {
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments", "zoom", "intake"])
        try spool.prepare()
        let router = buildRouter(
            configuration: configuration,
            spool: spool,
            health: {
                HealthReport(databaseUp: databaseUp, received: 3, inserted: 2, inbox: 1, processing: 0, failed: 0)
            },
            now: { now }
        )
        return (Application(router: router), spool)
    }

    func inbox(_ spool: Spool, _ kind: String) throws -> [String] { try spool.scanAll(spool.inboxPath(kind)) }

    /// The headers of a Standard Webhooks delivery of `body` as `id`, signed with `secret` at `time`.
    static func signed(_ id: String, _ body: String, secret: String, at time: Int) -> HTTPFields {
        let signature = StandardWebhooks.signature(
            id: id,
            timestamp: String(time),
            body: Array(body.utf8),
            key: StandardWebhooks.key(secret: secret)
        )
        return [
            .contentType: "application/json", HTTPField.Name("webhook-id")!: id,
            HTTPField.Name("webhook-timestamp")!: String(time), HTTPField.Name("webhook-signature")!: signature,
        ]
    }

    @Test func aWebhookIsOnDiskInTheInboxBeforeThe202() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app()
        let body = event("A1", "2025-01-10T12:30:00Z")
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .accepted)
                let reply = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                #expect(reply["status"]?.stringValue == "accepted")
                let id = try #require(reply["id"]?.stringValue)
                let names = try inbox(spool, "appointments")
                #expect(names == [id + ".json"])
                let stored = try String(
                    contentsOfFile: spool.inboxPath("appointments") + "/" + id + ".json",
                    encoding: .utf8
                )
                #expect(stored == body)
            }
        }
    }

    @Test func theDoorChecksContentTypeSizeAndJSON() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app(HTTPConfiguration(webhookBodyLimit: 64, openRoutes: Self.allRoutes))
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "text/plain"],
                body: ByteBuffer(string: "{}")
            ) {
                #expect($0.status == .unsupportedMediaType)
            }
            // A compressed body is refused by name, not spooled as its compressed bytes.
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .contentEncoding: "gzip"],
                body: ByteBuffer(bytes: [0x1F, 0x8B, 0x08, 0x00])
            ) { response in
                #expect(response.status == .unsupportedMediaType)
                #expect(String(buffer: response.body).contains("Content-Encoding is not supported"))
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: "[" + String(repeating: "1,", count: 100) + "1]")
            ) { #expect($0.status == .contentTooLarge) }
            // Media types are case-insensitive.
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "Application/JSON; charset=UTF-8"],
                body: ByteBuffer(string: "{\"a\": tru}")
            ) { #expect($0.status == .badRequest) }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json; charset=utf-8"],
                body: ByteBuffer(string: "{\"a\": tru}")
            ) { response in
                #expect(response.status == .badRequest)
                #expect(String(buffer: response.body).contains("byte 9"))
            }
            try await client.execute(
                uri: "/ingest",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: "{}")
            ) {
                #expect($0.status == .badRequest)
            }
        }
        #expect(try inbox(spool, "appointments").isEmpty && inbox(spool, "intake").isEmpty)
    }

    @Test func bearerTokensAreCheckedPerRoute() async throws {
        defer { dir.cleanup() }
        let token = try #require(HTTPToken(spec: "scheduler:s3cret:appointments"))
        let (app, spool) = try app(HTTPConfiguration(host: "0.0.0.0", tokens: [token]))
        try await app.test(.router) { client in
            let body = ByteBuffer(string: event("A1", "2025-01-10T12:30:00Z"))
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json"],
                body: body
            ) {
                #expect($0.status == .unauthorized)
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer wrong"],
                body: body
            ) { #expect($0.status == .unauthorized) }
            try await client.execute(
                uri: "/ingest",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer s3cret"],
                body: ByteBuffer(string: "[]")
            ) { #expect($0.status == .forbidden) }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer s3cret"],
                body: body
            ) { #expect($0.status == .accepted) }
        }
        #expect(try inbox(spool, "appointments").count == 1)
        // Every route closed (no credential): safe anywhere. An opened route: loopback only.
        #expect(HTTPConfiguration(host: "0.0.0.0").refusal == nil)
        #expect(HTTPConfiguration(host: "0.0.0.0", openRoutes: ["intake"]).refusal != nil)
        #expect(HTTPConfiguration(host: "127.0.0.1", openRoutes: ["intake"]).refusal == nil)
    }

    /// The bearer scheme is case-insensitive (RFC 9110 §11.1), one or more spaces before the token (issue
    /// 16, finding 6: `bearer …` was refused).
    @Test func theBearerSchemeIsCaseInsensitive() async throws {
        defer { dir.cleanup() }
        let token = try #require(HTTPToken(spec: "scheduler:0123456789abcdef:appointments"))
        let (app, spool) = try app(HTTPConfiguration(host: "0.0.0.0", tokens: [token]))
        try await app.test(.router) { client in
            for (n, header) in [
                "bearer 0123456789abcdef", "BEARER 0123456789abcdef", "BeArEr 0123456789abcdef",
                "Bearer  0123456789abcdef",
            ].enumerated() {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: [.contentType: "application/json", .authorization: header],
                    body: ByteBuffer(string: event("CASE\(n)", "2025-01-10T12:30:00Z"))
                ) { #expect($0.status == .accepted, "\(header)") }
            }
            for header in [
                "Basic 0123456789abcdef", "Bearer0123456789abcdef", "bearer", "bearer ", "Bearerx 0123456789abcdef",
                "bearer 0123456789ABCDEF",
            ] {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: [.contentType: "application/json", .authorization: header],
                    body: ByteBuffer(string: event("NO", "2025-01-10T12:30:00Z"))
                ) { #expect($0.status == .unauthorized, "\(header)") }
            }
        }
        #expect(try inbox(spool, "appointments").count == 4)
    }

    /// The one rule for secrets: empty or under 16 bytes of key refused, a Standard Webhooks secret
    /// judged by its decoded key.
    @Test func secretsUnderSixteenBytesOfKeyAreWeak() {
        #expect(SecretRule.weakness(keyBytes: 0)?.hasPrefix("is empty") == true)
        #expect(SecretRule.weakness(keyBytes: 15)?.hasPrefix("is too weak: 15 bytes") == true)
        #expect(SecretRule.weakness(keyBytes: 16) == nil)
        #expect(SecretRule.weakness(zoomSecret: "")?.hasPrefix("is empty") == true)
        #expect(SecretRule.weakness(zoomSecret: "4fv1RkqGQUq5sWbEz6hA5A") == nil)
        #expect(SecretRule.weakness(webhookSecret: "whsec_")?.hasPrefix("is empty") == true)
        // 24 base64 characters are 18 key bytes; 20 are 15.
        #expect(SecretRule.weakness(webhookSecret: "whsec_" + Base64.encode(Array(repeating: 1, count: 18))) == nil)
        let short = SecretRule.weakness(webhookSecret: "whsec_" + Base64.encode(Array(repeating: 1, count: 15)))
        #expect(short?.hasPrefix("is too weak: 15 bytes") == true)
        #expect(SecretRule.weakness(webhookSecret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw") == nil)
        // An empty bearer secret parses, so that the rule names it.
        #expect(HTTPToken(spec: "ops::*")?.secretBytes == 0)
        #expect(HTTPToken(spec: "ops:0123456789abcdef:*")?.secretBytes == 16)
    }

    @Test func zoomSignatureVectorsThroughTheRealRoute() async throws {
        defer { dir.cleanup() }
        let vectors = try JSONParser.parse(
            [UInt8](Data(contentsOf: TestPaths.testdata.appendingPathComponent("zoom/signature-vectors.json")))
        )
        guard case .array(let list) = vectors["signature_vectors"] else {
            Issue.record("no vectors")
            return
        }
        var checked = 0
        for vector in list {
            // Only vectors whose body is JSON and whose timestamp is a number can reach the signature check.
            guard let timestamp = vector["x-zm-request-timestamp"]?.stringValue, let seconds = Int(timestamp),
                seconds < 10_000_000_000, let body = vector["body"]?.stringValue,
                let secret = vector["secret"]?.stringValue, let signature = vector["x-zm-signature"]?.stringValue
            else { continue }
            let (app, _) = try app(HTTPConfiguration(zoomSecrets: ["rotated-out", secret]), now: seconds + 10)
            let valid = vector["expect_valid"] == .bool(true)
            try await app.test(.router) { client in
                try await client.execute(
                    uri: "/zoom_events/events",
                    method: .post,
                    headers: [
                        .contentType: "application/json", HTTPField.Name("x-zm-signature")!: signature,
                        HTTPField.Name("x-zm-request-timestamp")!: timestamp,
                    ],
                    body: ByteBuffer(bytes: Array(body.utf8))
                ) { response in
                    if valid {
                        // Zoom counts only 200 and 204 as delivered.
                        #expect(response.status == .ok, "\(vector["id"]?.stringValue ?? "")")
                    } else {
                        #expect(response.status == .unauthorized, "\(vector["id"]?.stringValue ?? "")")
                    }
                }
            }
            checked += 1
        }
        #expect(checked >= 9)
    }

    /// A timestamp header near Int.min overflowed the replay check: a trap any client could cause before
    /// authentication. Both signed routes answer 401 for the extremes.
    @Test func extremeTimestampHeadersAreRefusedNotTrappedOn() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app(
            HTTPConfiguration(
                zoomSecrets: ["4fv1RkqGQUq5sWbEz6hA5A"],
                webhookSecrets: ["appointments": ["whsec_" + Base64.encode(Array(repeating: 1, count: 32))]]
            ),
            now: 1_720_705_460
        )
        try await app.test(.router) { client in
            for value in ["-9223372036854775808", "9223372036854775807", "-9223372036854775000"] {
                try await client.execute(
                    uri: "/zoom_events/events",
                    method: .post,
                    headers: [
                        .contentType: "application/json", HTTPField.Name("x-zm-signature")!: "v0=00",
                        HTTPField.Name("x-zm-request-timestamp")!: value,
                    ],
                    body: ByteBuffer(string: "{}")
                ) { response in #expect(response.status == .unauthorized, "zoom \(value)") }
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: [
                        .contentType: "application/json", HTTPField.Name("webhook-id")!: "msg_1",
                        HTTPField.Name("webhook-timestamp")!: value, HTTPField.Name("webhook-signature")!: "v1,AA==",
                    ],
                    body: ByteBuffer(string: "{}")
                ) { response in #expect(response.status == .unauthorized, "standard webhooks \(value)") }
            }
        }
        #expect(try inbox(spool, "zoom").isEmpty && inbox(spool, "appointments").isEmpty)
    }

    @Test func urlValidationIsAnsweredAtOnceAndNeverSpooledAndOldTimestampsAreReplays() async throws {
        defer { dir.cleanup() }
        let secret = "4fv1RkqGQUq5sWbEz6hA5A"
        let body =
            "{\"payload\":{\"plainToken\":\"xys8n8PGS7mAU0m5-YJjRA\"},\"event_ts\":1720705455858,\"event\":\"endpoint.url_validation\"}"
        let signature = "v0=93a1a675965ceb9c5a50c5dfb31f20e50f763be37a54ef74cd2d16a1a8e5c0d6"
        let headers: HTTPFields = [
            .contentType: "application/json", HTTPField.Name("x-zm-signature")!: signature,
            HTTPField.Name("x-zm-request-timestamp")!: "1720705455",
        ]
        let (fresh, spool) = try app(HTTPConfiguration(zoomSecrets: [secret]), now: 1_720_705_460)
        try await fresh.test(.router) { client in
            try await client.execute(
                uri: "/zoom_events/events",
                method: .post,
                headers: headers,
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .ok)
                let answer = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                #expect(
                    answer["encryptedToken"]?.stringValue
                        == "2fffc6a967dde4f68024025a5bd991c5ae1e5313b4e6365be4883e3e81d479b3"
                )
            }
        }
        #expect(try inbox(spool, "zoom").isEmpty)
        let (late, _) = try app(HTTPConfiguration(zoomSecrets: [secret]), now: 1_720_705_455 + 301)
        try await late.test(.router) { client in
            try await client.execute(
                uri: "/zoom_events/events",
                method: .post,
                headers: headers,
                body: ByteBuffer(string: body)
            ) {
                #expect($0.status == .unauthorized)
            }
        }
    }

    @Test func healthReportsTheDatabaseCountersAndQueues() async throws {
        defer { dir.cleanup() }
        let (app, _) = try app()
        try await app.test(.router) { client in
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .ok)
                #expect(
                    String(buffer: response.body)
                        == "{\"status\":\"ok\",\"db\":\"up\",\"received\":3,\"inserted\":2,\"queues\":{\"inbox\":1,\"processing\":0,\"failed\":0}}"
                )
            }
            // A monitor that checks with HEAD gets the same status.
            try await client.execute(uri: "/health", method: .head) { response in
                #expect(response.status == .ok)
                #expect(response.body.readableBytes == 0)
            }
        }
        let (down, _) = try self.app(databaseUp: false)
        try await down.test(.router) { client in
            try await client.execute(uri: "/health", method: .get) { response in
                #expect(response.status == .serviceUnavailable)
                #expect(String(buffer: response.body).hasPrefix("{\"status\":\"error\",\"db\":\"down\","))
            }
            try await client.execute(uri: "/health", method: .head) { #expect($0.status == .serviceUnavailable) }
        }
    }

    @Test func aSenderOverItsRateGets429WithRetryAfterAndOthersDoNot() async throws {
        defer { dir.cleanup() }
        let a = try #require(HTTPToken(spec: "a:secret-a:*"))
        let b = try #require(HTTPToken(spec: "b:secret-b:*"))
        // One request per 1,000 s (a burst of one): no refill can happen while the test runs, however slow
        // the machine (at 2 per second, a loaded CI machine refilled a token between requests; the first
        // request's fsyncs alone may take seconds there).
        let (app, spool) = try app(HTTPConfiguration(tokens: [a, b], ratePerSecond: 0.001))
        try await app.test(.router) { client in
            var statuses: [HTTPResponse.Status] = []
            var retryAfter: String?
            for n in 0..<2 {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: [.contentType: "application/json", .authorization: "Bearer secret-a"],
                    body: ByteBuffer(string: event("R\(n)", "2025-01-10T12:30:00Z"))
                ) { response in
                    statuses.append(response.status)
                    if response.status == .tooManyRequests { retryAfter = response.headers[.retryAfter] }
                }
            }
            #expect(statuses == [.accepted, .tooManyRequests])
            // Whole seconds until the next token: 1,000 less what the first request's time used up, never
            // 0, never more than the rate allows.
            let seconds = try #require(retryAfter.flatMap { Int($0) })
            #expect((900...1_000).contains(seconds), "Retry-After: \(seconds)")
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: [.contentType: "application/json", .authorization: "Bearer secret-b"],
                body: ByteBuffer(string: event("R9", "2025-01-10T12:30:00Z"))
            ) { #expect($0.status == .accepted) }
        }
        #expect(try inbox(spool, "appointments").count == 2)
    }

    @Test func aTokenBucketRefillsAtItsRate() {
        let limiter = RateLimiter(rate: 10, burst: 10)
        let start = ContinuousClock.now
        for _ in 0..<10 { #expect(limiter.take("k", now: start) == nil) }
        #expect(limiter.take("k", now: start) == 1)
        #expect(limiter.take("k", now: start + .milliseconds(150)) == nil)
        #expect(limiter.take("other", now: start) == nil)
        // A tiny configured rate: Retry-After is capped at a day, not an overflowing conversion.
        let slow = RateLimiter(rate: 1e-300, burst: 1)
        #expect(slow.take("k", now: start) == nil)
        #expect(slow.take("k", now: start) == 86_400)
    }

    /// An inbox swapped for a symlink after start is out of service for the door too: a request is
    /// refused (503) and nothing is written through the old folder's descriptor — where no one would
    /// process it — nor through the link.
    @Test func anInboxReplacedAfterStartRefusesRequestsAndWritesNothing() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app(HTTPConfiguration(openRoutes: Self.allRoutes))
        let headers: HTTPFields = [.contentType: "application/json"]
        let elsewhere = dir.path + "/elsewhere"
        try await app.test(.router) { client in
            let body = ByteBuffer(string: event("SW1", "2025-01-10T12:30:00Z"))
            try await client.execute(uri: "/webhook/appointments", method: .post, headers: headers, body: body) {
                #expect($0.status == .accepted)
            }
            let folder = spool.inboxPath("appointments")
            #expect(rename(folder, folder + ".old") == 0)
            #expect(mkdir(elsewhere, 0o755) == 0 && symlink(elsewhere, folder) == 0)
            let next = ByteBuffer(string: event("SW2", "2025-01-10T12:30:00Z"))
            for _ in 0..<2 {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: headers,
                    body: next
                ) { response in
                    #expect(response.status == .serviceUnavailable)
                    #expect(String(buffer: response.body).contains("out of service"))
                }
            }
            #expect(try FileManager.default.contentsOfDirectory(atPath: folder + ".old").count == 1)
            #expect(try FileManager.default.contentsOfDirectory(atPath: elsewhere).isEmpty)
        }
    }

    @Test func aFullInboxOrANearlyFullDiskIsBackpressure503WithRetryAfter() async throws {
        defer { dir.cleanup() }
        let body = ByteBuffer(string: event("P1", "2025-01-10T12:30:00Z"))
        let headers: HTTPFields = [.contentType: "application/json"]
        let (app, spool) = try app(HTTPConfiguration(inboxHighWater: 1, openRoutes: Self.allRoutes))
        try await app.test(.router) { client in
            try await client.execute(uri: "/webhook/appointments", method: .post, headers: headers, body: body) {
                #expect($0.status == .accepted)
            }
            try await Task.sleep(for: .milliseconds(600))  // the inbox count is refreshed every 500 ms
            try await client.execute(uri: "/webhook/appointments", method: .post, headers: headers, body: body) {
                response in
                #expect(response.status == .serviceUnavailable)
                #expect(response.headers[.retryAfter] == "5")
            }
        }
        #expect(try inbox(spool, "appointments").count == 1)
        let (full, _) = try self.app(HTTPConfiguration(diskReserve: Int64.max, openRoutes: Self.allRoutes))
        try await full.test(.router) { client in
            try await client.execute(uri: "/ingest", method: .post, headers: headers, body: ByteBuffer(string: "[]")) {
                #expect($0.status == .serviceUnavailable)
            }
        }
    }

    /// The Standard Webhooks example (standardwebhooks.com spec and reference libraries): this secret,
    /// id, timestamp and body sign to exactly this header.
    @Test func standardWebhooksPublishedExampleVerifies() {
        let key = StandardWebhooks.key(secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        let body = Array(#"{"test": 2432232314}"#.utf8)
        let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        #expect(
            StandardWebhooks.signature(
                id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp: "1614265330",
                body: body,
                key: key
            ) == expected
        )
        let other = StandardWebhooks.key(secret: "whsec_" + Base64.encode(Array(repeating: 7, count: 24)))
        for header in [expected, "v1,bm90IGl0 " + expected, "v1a,xx " + expected] {
            #expect(
                StandardWebhooks.isValid(
                    header: header,
                    id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    timestamp: "1614265330",
                    body: body,
                    keys: [other, key]
                )
            )
        }
        for header in [
            "", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE", "v2,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        ] {
            #expect(
                !StandardWebhooks.isValid(
                    header: header,
                    id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                    timestamp: "1614265330",
                    body: body,
                    keys: [key]
                )
            )
        }
        #expect(
            !StandardWebhooks.isValid(
                header: expected,
                id: "msg_other",
                timestamp: "1614265330",
                body: body,
                keys: [key]
            )
        )
        #expect(
            !StandardWebhooks.isValid(
                header: expected,
                id: "msg_p5jXN8AQM9LWM0D4loKWxJek",
                timestamp: "1614265330",
                body: body,
                keys: [other]
            )
        )
        for sample in [[], [0], [0, 1], [0, 1, 2], Array(0...255)] as [[UInt8]] {
            #expect(Base64.decode(Base64.encode(sample)) == (sample.isEmpty ? nil : sample))
        }
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy" && Base64.encode(Array("fo".utf8)) == "Zm8=")
        #expect(Base64.decode("Zm9v!mFy") == nil && Base64.decode("Zm=v") == nil)
    }

    @Test func standardWebhooksSignedDeliveriesAreVerifiedAndAWebhookIdIsStoredOnce() async throws {
        defer { dir.cleanup() }
        let now = 1_720_707_175
        let oldSecret = "whsec_" + Base64.encode(Array(repeating: 1, count: 32))
        let newSecret = "whsec_" + Base64.encode(Array(repeating: 2, count: 32))
        let (app, spool) = try app(
            HTTPConfiguration(
                tokens: [HTTPToken(spec: "ops:s3cret:*")!],
                webhookSecrets: ["appointments": [oldSecret, newSecret]]
            ),
            now: now
        )
        @Sendable func headers(_ id: String, _ body: String, secret: String, at time: Int = now) -> HTTPFields {
            Self.signed(id, body, secret: secret, at: time)
        }
        let body = event("S1", "2025-01-10T12:30:00Z")
        try await app.test(.router) { client in
            // Signed with either secret of a rotation: accepted, no bearer token needed on this route.
            var first = ""
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: headers("msg_1", body, secret: newSecret),
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .accepted)
                first = response.headers[HTTPField.Name("x-carespool-id")!] ?? ""
                #expect(response.headers[HTTPField.Name("x-carespool-replayed")!] == nil)
            }
            // The same webhook-id delivered again (even signed with the old secret): 202 with the first id.
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: headers("msg_1", body, secret: oldSecret),
                body: ByteBuffer(string: body)
            ) { response in
                #expect(response.status == .accepted)
                #expect(response.headers[HTTPField.Name("x-carespool-id")!] == first)
                #expect(response.headers[HTTPField.Name("x-carespool-replayed")!] == "true")
                #expect(String(buffer: response.body).contains(first))
            }
            #expect(try inbox(spool, "appointments") == [first + ".json"])
            // Wrong secret, altered body, stale timestamp, no webhook-id: 401, nothing spooled.
            let wrong = "whsec_" + Base64.encode(Array(repeating: 3, count: 32))
            let cases: [(HTTPFields, String)] = [
                (headers("msg_2", body, secret: wrong), body),
                (headers("msg_3", body, secret: newSecret), body + " "),
                (headers("msg_4", body, secret: newSecret, at: now - 301), body),
                (headers("", body, secret: newSecret), body),
            ]
            for (fields, sent) in cases {
                try await client.execute(
                    uri: "/webhook/appointments",
                    method: .post,
                    headers: fields,
                    body: ByteBuffer(string: sent)
                ) { #expect($0.status == .unauthorized) }
            }
            // Routes without a webhook secret still want their bearer token.
            try await client.execute(
                uri: "/ingest",
                method: .post,
                headers: headers("msg_5", "[]", secret: newSecret),
                body: ByteBuffer(string: "[]")
            ) { #expect($0.status == .unauthorized) }
        }
        #expect(try inbox(spool, "appointments").count == 1)
        #expect(try spool.scanAll(spool.keysPath("appointments")).count == 1)
    }

    /// Stripe's rule for an idempotency key reused with other parameters: the first request stands, the
    /// second is a 409 naming the key, and nothing new is spooled; the same body again stays a replay.
    /// Every request is signed by the official Standard Webhooks library, as a real sender's would be.
    @Test func aWebhookIdReusedForAnotherBodyIsA409AndTheSameBodyAgainAReplay() async throws {
        defer { dir.cleanup() }
        let now = 1_720_707_175
        let secret = "whsec_" + Base64.encode(Array(repeating: 4, count: 32))
        let (app, spool) = try app(HTTPConfiguration(webhookSecrets: ["appointments": [secret]]), now: now)
        let first = event("K1", "2025-01-10T12:30:00Z")
        let other = event("K2", "2025-01-10T12:45:00Z")
        var signatures: [String: String] = [:]
        for body in [first, other] {
            signatures[body] = try await OfficialStandardWebhooks.sign(
                id: "msg_reused",
                timestamp: now,
                body: body,
                secret: secret
            )
        }
        let signed = signatures
        @Sendable func headers(_ id: String, _ body: String) -> HTTPFields {
            [
                .contentType: "application/json", HTTPField.Name("webhook-id")!: id,
                HTTPField.Name("webhook-timestamp")!: String(now),
                HTTPField.Name("webhook-signature")!: signed[body]!,
            ]
        }
        try await app.test(.router) { client in
            var firstID = ""
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: headers("msg_reused", first),
                body: ByteBuffer(string: first)
            ) { response in
                #expect(response.status == .accepted)
                firstID = response.headers[HTTPField.Name("x-carespool-id")!] ?? ""
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: headers("msg_reused", other),
                body: ByteBuffer(string: other)
            ) { response in
                #expect(response.status == .conflict)
                let reply = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                let message = try #require(reply["error"]?.stringValue)
                #expect(message.contains("webhook-id \"msg_reused\" was already used for another body"))
                #expect(message.contains(firstID))
            }
            try await client.execute(
                uri: "/webhook/appointments",
                method: .post,
                headers: headers("msg_reused", first),
                body: ByteBuffer(string: first)
            ) { response in
                #expect(response.status == .accepted)
                #expect(response.headers[HTTPField.Name("x-carespool-id")!] == firstID)
                #expect(response.headers[HTTPField.Name("x-carespool-replayed")!] == "true")
            }
            #expect(try inbox(spool, "appointments") == [firstID + ".json"])
        }
    }

    /// The official library and carespool agree on every signature (any secret length, bodies with
    /// non-ASCII text, a trailing line end): the verifier checks what real senders send.
    @Test func theOfficialLibrarysSignaturesMatchOurs() async throws {
        let cases: [(secret: [UInt8], body: String)] = [
            (Array(repeating: 7, count: 24), "{\"notes\":\"Zoë Müller, 東京\"}"),
            (Array(0..<64), "[]"),
            (Array(repeating: 0xFF, count: 32), "{\"a\":1}\n"),
        ]
        for (index, item) in cases.enumerated() {
            let secret = "whsec_" + Base64.encode(item.secret)
            let library = try await OfficialStandardWebhooks.sign(
                id: "msg_\(index)",
                timestamp: 1_720_707_175 + index,
                body: item.body,
                secret: secret
            )
            let ours = StandardWebhooks.signature(
                id: "msg_\(index)",
                timestamp: String(1_720_707_175 + index),
                body: Array(item.body.utf8),
                key: StandardWebhooks.key(secret: secret)
            )
            #expect(library == ours, "case \(index)")
        }
    }

    /// Zoom counts a delivery as received only on 200 or 204 (else it retries at +5, +20 and +60
    /// minutes, then stops): its route answers 200 with the usual body; the other routes keep 202.
    @Test func theZoomRouteAnswers200AndTheOthers202() async throws {
        defer { dir.cleanup() }
        let (app, spool) = try app()
        let zoom =
            "{\"event\":\"meeting.started\",\"event_ts\":1720707175000,\"payload\":{\"account_id\":\"a1\","
            + "\"object\":{\"id\":\"85393847045\",\"uuid\":\"u1\",\"start_time\":\"2025-01-10T12:00:00Z\"}}}"
        try await app.test(.router) { client in
            try await client.execute(
                uri: "/zoom_events/events",
                method: .post,
                headers: [.contentType: "application/json"],
                body: ByteBuffer(string: zoom)
            ) { response in
                #expect(response.status == .ok)
                let reply = try JSONParser.parse(Array(String(buffer: response.body).utf8))
                #expect(reply["status"]?.stringValue == "accepted")
                let id = try #require(reply["id"]?.stringValue)
                #expect(response.headers[HTTPField.Name("x-carespool-id")!] == id)
                #expect(try inbox(spool, "zoom") == [id + ".json"])
            }
            for (uri, body) in [("/webhook/appointments", event("Z1", "2025-01-10T12:30:00Z")), ("/ingest", "[]")] {
                try await client.execute(
                    uri: uri,
                    method: .post,
                    headers: [.contentType: "application/json"],
                    body: ByteBuffer(string: body)
                ) { #expect($0.status == .accepted, "\(uri)") }
            }
        }
    }

    /// Found by a hostile review: with one id end to end, a conflict message names another sender's
    /// file; that id must not open its verdict. A token reads only what it sent, looked up by id.
    @Test func aTokenReadsTheVerdictsOfWhatItSentAndNoOneElses() async throws {
        defer { dir.cleanup() }
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments", "zoom", "intake"])
        try spool.prepare()
        let aliceFile = "01a2d000-0000-7000-8000-00000000000a"
        let router = buildRouter(
            configuration: HTTPConfiguration(
                tokens: [
                    try #require(HTTPToken(spec: "alice:alice-secret-0123456:appointments")),
                    try #require(HTTPToken(spec: "bob:bob-secret-0123456789:appointments")),
                ]
            ),
            spool: spool,
            health: { HealthReport(databaseUp: true, received: 0, inserted: 0, inbox: 0, processing: 0, failed: 0) },
            verdict: { id, kind in
                guard id == aliceFile, kind == "appointments" else { return nil }
                return SpoolVerdict(
                    sender: "http:alice",
                    outcome: "partial",
                    stored: 1,
                    duplicates: 0,
                    rejected: 1,
                    errors: [(2, 2, "/patient_id", "\"SECRET\" is shorter than 1 characters")]
                )
            }
        )
        try await Application(router: router).test(.router) { client in
            for (secret, status) in [
                ("alice-secret-0123456", HTTPResponse.Status.ok), ("bob-secret-0123456789", .notFound),
            ] {
                try await client.execute(
                    uri: "/spool/" + aliceFile,
                    method: .get,
                    headers: [.authorization: "Bearer " + secret]
                ) { response in
                    #expect(response.status == status, "\(secret)")
                    #expect(!String(buffer: response.body).contains("SECRET"))
                }
            }
        }
    }

    @Test func concurrentDeliveriesOfOneWebhookIdSpoolOneFile() async throws {
        defer { dir.cleanup() }
        let spool = Spool(root: dir.path + "/spool", kinds: ["appointments"])
        try spool.prepare()
        let writer = DurableWriter(spool: spool)
        let target = spool.inboxes[0]
        let results = try await withThrowingTaskGroup(of: (String, Bool).self) { group in
            for _ in 0..<20 {
                group.addTask {
                    try await writer.write(Array("{}".utf8), into: target, idempotencyKey: "k1", sender: nil)
                }
            }
            return try await group.reduce(into: []) { $0.append($1) }
        }
        #expect(Set(results.map(\.0)).count == 1)
        #expect(results.filter { !$0.1 }.count == 1)
        #expect(try inbox(spool, "appointments").count == 1)
    }
}

// csv-parse-bench: parsing-only speed of carespool's CSV reader (for `make bench`).
// Usage: csv-parse-bench FILE — reads FILE in 1 MiB chunks and prints rows, seconds and rows/s.

import CSV

#if canImport(Glibc)
    import Glibc
#endif

let arguments = CommandLine.arguments
guard arguments.count == 2 else {
    print("usage: csv-parse-bench FILE")
    exit(64)
}
let fd = open(arguments[1], O_RDONLY)
guard fd >= 0 else {
    print("cannot open \(arguments[1])")
    exit(66)
}
var start = timespec()
clock_gettime(CLOCK_MONOTONIC, &start)
var reader = CSVReader()
var rows = 0
var fields = 0
var buffer = [UInt8](repeating: 0, count: 1 << 20)
while true {
    let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress!, $0.count) }
    if n <= 0 { break }
    reader.feed(buffer[0..<n]) { record in
        rows += 1
        fields += record.fields?.count ?? 0
    }
}
reader.finish { record in
    rows += 1
    fields += record.fields?.count ?? 0
}
var end = timespec()
clock_gettime(CLOCK_MONOTONIC, &end)
let seconds = Double(end.tv_sec - start.tv_sec) + Double(end.tv_nsec - start.tv_nsec) / 1e9
print("rows \(rows) fields \(fields) seconds \(seconds) rows/s \(Int(Double(rows) / seconds))")

// A real S3-compatible HTTP server for the tests (gofakes3, in-memory backend): it speaks
// the S3 REST protocol (buckets, PUT/GET/HEAD/DELETE object, ListObjectsV2, multipart),
// so the trainer's fsspec client is exercised over HTTP end to end.
// Usage: s3server -addr 127.0.0.1:PORT  (prints "listening ADDR" once it accepts).
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"

	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address")
	flag.Parse()
	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening %s\n", listener.Addr())
	faker := gofakes3.New(s3mem.New())
	log.Fatal(http.Serve(listener, faker.Server()))
}

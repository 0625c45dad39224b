// hello is kodev's quick-start app: an HTTP server that serves its kodata.
package main

import (
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
)

func main() {
	once := flag.Bool("once", false, "print the greeting and exit")
	addr := flag.String("addr", ":8080", "listen address")
	flag.Parse()

	greeting, err := os.ReadFile(filepath.Join(os.Getenv("KO_DATA_PATH"), "greeting.txt"))
	if err != nil {
		log.Fatalf("reading kodata: %v", err)
	}
	message := fmt.Sprintf("%s (from %s/%s)", string(greeting), runtime.GOOS, runtime.GOARCH)
	if *once {
		fmt.Println(message)
		return
	}
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, message)
	})
	log.Printf("listening on %s", *addr)
	log.Fatal(http.ListenAndServe(*addr, nil))
}

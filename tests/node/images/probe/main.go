// Command probe is the test nodes' tool image: what a test needs a pod to do,
// with no shell and no package manager in the image.
//
//	probe serve PORT         answer every HTTP request with the pod's hostname
//	probe get URL [TRIES]    print the body of URL, retrying for up to TRIES seconds
//	probe resolve NAME       print the addresses NAME resolves to (cluster DNS)
//	probe api URL            GET URL from the apiserver with the pod's service-account
//	                         token and CA (in-cluster credentials), print the body
//	probe alloc MIB          touch MIB mebibytes of memory, then wait (to be OOM-killed)
//	probe sleep SECONDS      wait
package main

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail("usage: probe serve|get|resolve|alloc|sleep ARG")
	}
	arg := ""
	if len(os.Args) > 2 {
		arg = os.Args[2]
	}
	switch os.Args[1] {
	case "serve":
		host, _ := os.Hostname()
		http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, host) })
		fail(http.ListenAndServe(":"+arg, nil).Error())
	case "get":
		get(arg, number(os.Args, 3, 30))
	case "api":
		api(arg)
	case "resolve":
		addrs, err := net.LookupHost(arg)
		if err != nil {
			fail(err.Error())
		}
		for _, a := range addrs {
			fmt.Println(a)
		}
	case "alloc":
		alloc(number(os.Args, 2, 0))
	case "sleep":
		time.Sleep(time.Duration(number(os.Args, 2, 0)) * time.Second)
	default:
		fail("unknown command " + os.Args[1])
	}
}

func get(url string, tries int) {
	deadline := time.Now().Add(time.Duration(tries) * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			fmt.Print(string(body))
			return
		}
		if time.Now().After(deadline) {
			fail(err.Error())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

const serviceAccount = "/var/run/secrets/kubernetes.io/serviceaccount/"

func api(url string) {
	ca, err := os.ReadFile(serviceAccount + "ca.crt")
	if err != nil {
		fail(err.Error())
	}
	token, err := os.ReadFile(serviceAccount + "token")
	if err != nil {
		fail(err.Error())
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	c := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Authorization", "Bearer "+string(token))
	resp, err := c.Do(req)
	if err != nil {
		fail(err.Error())
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Print(string(body))
}

func alloc(mib int) {
	held := make([][]byte, 0, mib)
	for i := 0; i < mib; i++ {
		block := make([]byte, 1<<20)
		for j := range block {
			block[j] = byte(j)
		}
		held = append(held, block)
	}
	fmt.Printf("holding %d MiB\n", len(held))
	time.Sleep(time.Hour)
}

func number(args []string, i, fallback int) int {
	if len(args) <= i {
		return fallback
	}
	n, err := strconv.Atoi(args[i])
	if err != nil {
		fail(err.Error())
	}
	return n
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "probe:", msg)
	os.Exit(1)
}

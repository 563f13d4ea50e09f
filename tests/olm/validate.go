// bundle-validate: validates an OLM bundle directory with operator-framework/api's validators — the
// default bundle suite plus OperatorHub, categories/capabilities, good practices, deprecated APIs
// (for the given Kubernetes version) and object checks — the library
// `operator-sdk bundle validate --select-optional suite=operatorframework` runs. The multi-architecture
// check is left out: it pulls the images with a container tool.
// Prints one line per finding ("ERROR ..." / "WARN ...") and exits 1 if any error was found.
package main

import (
	"fmt"
	"os"

	"github.com/operator-framework/api/pkg/manifests"
	"github.com/operator-framework/api/pkg/validation"
)

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: bundle-validate BUNDLE_DIR K8S_VERSION (e.g. bundle 1.36)")
		os.Exit(2)
	}
	bundle, err := manifests.GetBundleFromDir(os.Args[1])
	if err != nil {
		fmt.Fprintf(os.Stderr, "bundle-validate: %s is not a readable bundle: %v\n", os.Args[1], err)
		os.Exit(2)
	}
	validators := validation.DefaultBundleValidators.WithValidators(
		validation.OperatorHubV2Validator,
		validation.StandardCapabilitiesValidator,
		validation.StandardCategoriesValidator,
		validation.GoodPracticesValidator,
		validation.AlphaDeprecatedAPIsValidator,
		validation.ObjectValidator,
	)
	objs := append(bundle.ObjectsToValidate(), map[string]string{"k8s-version": os.Args[2]})
	errors := 0
	for _, result := range validators.Validate(objs...) {
		for _, e := range result.Errors {
			fmt.Printf("ERROR %s: %s\n", result.Name, e.Error())
			errors++
		}
		for _, w := range result.Warnings {
			fmt.Printf("WARN %s: %s\n", result.Name, w.Error())
		}
	}
	if errors > 0 {
		os.Exit(1)
	}
}

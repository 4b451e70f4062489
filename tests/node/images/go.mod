module finetune.dev/testbed/images

go 1.24

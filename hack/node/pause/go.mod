module kubemaas.local/node/pause

go 1.22
